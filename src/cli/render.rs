//! Small pieces of the human format: colour (only on a terminal, never with `NO_COLOR`), times
//! with how far they are from now, and aligned `Label: value` lines.

use std::fmt::Write as _;

/// How text is styled. `plain()` in tests and pipes; `for_stdout()` decides from the terminal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
}

impl Style {
    pub const fn plain() -> Self {
        Self { color: false }
    }

    /// Colour when stdout is a terminal and `NO_COLOR` is unset (<https://no-color.org>).
    pub fn for_stdout() -> Self {
        Self {
            color: std::io::IsTerminal::is_terminal(&std::io::stdout())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    fn paint(self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    pub fn good(self, s: &str) -> String {
        self.paint("32", s)
    }

    pub fn bad(self, s: &str) -> String {
        self.paint("31", s)
    }

    pub fn warn(self, s: &str) -> String {
        self.paint("33", s)
    }

    pub fn bold(self, s: &str) -> String {
        self.paint("1", s)
    }

    pub fn dim(self, s: &str) -> String {
        self.paint("2", s)
    }

    /// A condition's status: True green, False red (yellow for conditions where False is good).
    pub fn status(self, status: &str, true_is_good: bool) -> String {
        match (status, true_is_good) {
            ("True", true) | ("False", false) => self.good(status),
            ("True", false) | ("False", true) => self.bad(status),
            _ => self.warn(status),
        }
    }
}

/// `2026-11-30T16:00:00Z (in 3h 2m)` / `(5m ago)`.
pub fn when(t: jiff::Timestamp, now: jiff::Timestamp) -> String {
    format!("{t} ({})", relative(t, now))
}

/// How far `t` is from `now`, in the two largest units: `in 3h 2m`, `5m 10s ago`, `now`.
pub fn relative(t: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let secs = t.as_second() - now.as_second();
    if secs == 0 {
        return "now".into();
    }
    let span = short_duration(secs.unsigned_abs());
    if secs > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// `3d 4h`, `2h 5m`, `5m 10s`, `42s`: the two largest non-zero units.
pub fn short_duration(secs: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (365 * 86_400, "y"),
        (86_400, "d"),
        (3_600, "h"),
        (60, "m"),
        (1, "s"),
    ];
    let Some(first) = UNITS.iter().position(|(size, _)| secs >= *size) else {
        return "0s".into();
    };
    let (size, unit) = UNITS[first];
    let mut out = format!("{}{unit}", secs / size);
    if let Some((next, next_unit)) = UNITS.get(first + 1) {
        let n = (secs % size) / next;
        if n > 0 {
            out.push_str(&format!(" {n}{next_unit}"));
        }
    }
    out
}

/// The first `n` characters of a fingerprint, for people (the JSON has it whole).
pub fn short_fp(fp: &str) -> &str {
    &fp[..16.min(fp.len())]
}

/// The label column of the top level of every command's output (`Private key:  ...`).
pub const TOP: usize = 13;

/// Lines of `Label:  value` with the values aligned, indented by `indent` spaces.
#[derive(Default)]
pub struct Fields {
    rows: Vec<(String, String)>,
    min_width: usize,
}

impl Fields {
    /// Labels padded to at least `width` characters (colon included), to line up with others.
    pub fn aligned(width: usize) -> Self {
        Self {
            rows: vec![],
            min_width: width,
        }
    }

    pub fn add(&mut self, label: &str, value: impl Into<String>) -> &mut Self {
        self.rows.push((label.to_string(), value.into()));
        self
    }

    /// A list value: one row, the items joined by ", ", or none at all when empty.
    pub fn list<I: IntoIterator<Item = S>, S: std::fmt::Display>(
        &mut self,
        label: &str,
        items: I,
    ) -> &mut Self {
        let joined: Vec<String> = items.into_iter().map(|s| s.to_string()).collect();
        if !joined.is_empty() {
            self.add(label, joined.join(", "));
        }
        self
    }

    pub fn write(&self, out: &mut String, indent: usize) {
        let width =
            (self.rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 1).max(self.min_width);
        for (label, value) in &self.rows {
            let _ = writeln!(
                out,
                "{:indent$}{:width$} {value}",
                "",
                format!("{label}:"),
                indent = indent
            );
        }
    }
}
