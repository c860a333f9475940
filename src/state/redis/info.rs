//! The one reader of Redis' `INFO` answers, for the gauges, the start-up checks
//! and `tidegate doctor` alike.
//!
//! `INFO` is text: `key:value` lines under `# Section` headers. Fields are kept as
//! text, and read as numbers where a caller needs one; a field that is missing or
//! not a number reads as zero, as Redis itself leaves unset limits at 0.

use std::collections::HashMap;

use redis::RedisResult;

use super::connection::Connection;

/// The fields of one `INFO` answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Info {
    fields: HashMap<String, String>,
}

impl Info {
    /// Reads the `key:value` lines of an `INFO` answer; headers and blank lines are
    /// not fields.
    pub fn parse(text: &str) -> Self {
        let fields = text
            .lines()
            .filter_map(|line| line.trim().split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        Info { fields }
    }

    /// The field `key`, as Redis wrote it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// The field `key` as a number; 0 when it is missing or not a number.
    pub fn number(&self, key: &str) -> f64 {
        self.get(key).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    }

    /// The field `key` as a whole number of bytes or keys; 0 when it is missing or
    /// not one.
    pub fn count(&self, key: &str) -> u64 {
        self.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// Every field, by name.
    pub fn into_fields(self) -> HashMap<String, String> {
        self.fields
    }
}

/// `INFO <section>` of every primary: the one server, or each Cluster primary.
pub async fn each_primary(conn: &Connection, section: &str) -> RedisResult<Vec<Info>> {
    let texts: Vec<String> = conn.query_each_primary(redis::cmd("INFO").arg(section)).await?;
    Ok(texts.iter().map(|text| Info::parse(text)).collect())
}

#[cfg(test)]
mod tests {
    use super::Info;

    #[test]
    fn fields_are_the_key_value_lines_and_numbers_default_to_zero() {
        let info = Info::parse("# Memory\r\nused_memory:1024\r\nmaxmemory_policy:noeviction\r\n\r\nratio:1.5\r\n");
        assert_eq!(info.get("maxmemory_policy"), Some("noeviction"));
        assert_eq!(info.count("used_memory"), 1024);
        assert_eq!(info.number("ratio"), 1.5);
        assert_eq!(info.count("maxmemory"), 0);
        assert_eq!(info.get("# Memory"), None);
        assert_eq!(info.into_fields().len(), 3);
    }
}
