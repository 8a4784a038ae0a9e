//! `/`: which rows the user wants to see. One text box matches a command name, a
//! workload or, when it is a number, a PID or a port the process holds a socket on:
//! the things a user knows about a misbehaving service before opening `top`.

use crate::top::rows::ProcessRow;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Lower-cased, trimmed.
    text: String,
}

impl Filter {
    pub fn new(text: &str) -> Self {
        Filter {
            text: text.trim().to_lowercase(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The port (or PID) a numeric filter names, which the frame must look up in the
    /// socket table.
    pub fn port(&self) -> Option<u16> {
        self.text.parse().ok()
    }

    pub fn matches(&self, row: &ProcessRow) -> bool {
        if self.text.is_empty() {
            return true;
        }
        if let Ok(number) = self.text.parse::<u32>()
            && (row.process.pid == number || row.on_port)
        {
            return true;
        }
        row.comm.to_lowercase().contains(&self.text)
            || row.workload.to_lowercase().contains(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::rows::tests::row;

    #[test]
    fn empty_matches_everything() {
        assert!(Filter::new("  ").matches(&row(1, "a")));
    }

    #[test]
    fn by_command_or_workload_ignoring_case() {
        let r = ProcessRow {
            workload: "nginx.service".to_owned(),
            ..row(10, "Leak-Server")
        };
        assert!(Filter::new("leak").matches(&r));
        assert!(Filter::new("NGINX").matches(&r));
        assert!(!Filter::new("churn").matches(&r));
    }

    #[test]
    fn a_number_is_a_pid_or_a_port() {
        let r = row(4242, "x");
        let filter = Filter::new("4242");
        assert_eq!(filter.port(), Some(4242));
        assert!(filter.matches(&r));
        assert!(!Filter::new("8080").matches(&r));
        let on_port = ProcessRow {
            on_port: true,
            ..row(1, "x")
        };
        assert!(Filter::new("8080").matches(&on_port));
        // Too big for a port: a PID only.
        assert_eq!(Filter::new("70000").port(), None);
    }
}
