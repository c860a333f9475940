//! The benches' settings from the environment.

/// The value of the variable `name`, if set; a value that does not parse stops the
/// bench, naming the variable, rather than silently running with the default.
pub fn knob<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    Some(v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not valid")))
}
