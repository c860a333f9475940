//! The benches' settings from the environment.

/// The value of the variable `name`, if set; a value that does not parse stops the
/// bench, naming the variable, rather than silently running with the default.
pub fn knob<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    Some(v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not valid")))
}

/// Makes `command` (a `tidegate serve`) configured by its flags alone: the flags in
/// `BENCH_TIDEGATE_ARGS` (split on whitespace) are added, and every `TIDEGATE_*`
/// variable of the bench's own environment is removed, so a setting left in the
/// shell never changes what is measured.
pub fn gateway_flags_only(command: &mut std::process::Command) {
    let extra = std::env::var("BENCH_TIDEGATE_ARGS").unwrap_or_default();
    if !extra.trim().is_empty() {
        println!("  extra flags: {extra}");
        command.args(extra.split_whitespace());
    }
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TIDEGATE_") {
            command.env_remove(key);
        }
    }
}
