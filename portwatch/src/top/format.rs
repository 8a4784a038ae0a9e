//! How `top` writes its numbers: short enough for a narrow column, and always the same
//! width for the same magnitude so a column does not jitter from one redraw to the next.

/// An age or a lifetime of whole seconds and up: `0s`, `45s`, `3m12s`, `2h05m`,
/// `3d04h`. At most 6 characters.
pub fn age(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".to_owned();
    }
    let s = seconds as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// A short lifetime, where milliseconds matter: `420us`, `1.2ms`, `35ms`, `2.5s`, then
/// as [`age`]. At most 6 characters.
pub fn lifetime(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".to_owned();
    }
    if seconds < 0.001 {
        format!("{:.0}us", seconds * 1e6)
    } else if seconds < 0.01 {
        format!("{:.1}ms", seconds * 1e3)
    } else if seconds < 1.0 {
        format!("{:.0}ms", seconds * 1e3)
    } else if seconds < 10.0 {
        format!("{seconds:.1}s")
    } else {
        age(seconds)
    }
}

/// A rate per second: `0`, `0.4`, `12`, `350`, `4.2k`, `35k`, `1.2M`, `35M`. One decimal below
/// 10 (a slow leak's 0.2/s must not read as 0), none above. At most 5 characters.
pub fn rate(per_s: f64) -> String {
    if !per_s.is_finite() {
        return "-".to_owned();
    }
    let magnitude = per_s.abs();
    let sign = if per_s < 0.0 { "-" } else { "" };
    if magnitude < 0.05 {
        "0".to_owned()
    } else if magnitude < 9.95 {
        format!("{sign}{magnitude:.1}")
    } else if magnitude < 999.5 {
        format!("{sign}{magnitude:.0}")
    } else if magnitude < 9_950.0 {
        format!("{sign}{:.1}k", magnitude / 1e3)
    } else if magnitude < 999_500.0 {
        format!("{sign}{:.0}k", magnitude / 1e3)
    } else if magnitude < 9_950_000.0 {
        format!("{sign}{:.1}M", magnitude / 1e6)
    } else {
        format!("{sign}{:.0}M", magnitude / 1e6)
    }
}

/// A change per minute, signed so growth stands out: `+3.0`, `-12`, `0`.
pub fn growth(per_min: f64) -> String {
    let text = rate(per_min);
    if per_min >= 0.05 && per_min.is_finite() {
        format!("+{text}")
    } else {
        text
    }
}

/// A count exact up to 99999 (the CLOSE_WAIT count a user compares with `ss` must be
/// exact), then `123k`, `4.5M`.
pub fn count(n: u64) -> String {
    match n {
        0..100_000 => n.to_string(),
        100_000..9_950_000 => format!("{:.0}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// Whole percent, clamped to 0-100: `0%`, `37%`, `100%`.
pub fn percent(share: f64) -> String {
    if !share.is_finite() {
        return "-".to_owned();
    }
    format!("{:.0}%", (share * 100.0).clamp(0.0, 100.0))
}

/// When a destination runs out of local ports: `full` (connects already fail), `in
/// 3m12s`, or `ok` when the recent rate is sustainable.
pub fn forecast(eta_s: Option<f64>) -> String {
    match eta_s {
        Some(eta) if eta <= 0.0 => "FULL".to_owned(),
        Some(eta) => format!("in {}", age(eta)),
        None => "ok".to_owned(),
    }
}

/// Cuts `text` to `width` characters, marking the cut with `…`.
pub fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut clipped: String = text.chars().take(width - 1).collect();
    clipped.push('…');
    clipped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(age(0.4), "0s");
        assert_eq!(age(45.9), "45s");
        assert_eq!(age(192.0), "3m12s");
        assert_eq!(age(3599.0), "59m59s");
        assert_eq!(age(7500.0), "2h05m");
        assert_eq!(age(3.0 * 86400.0 + 4.0 * 3600.0), "3d04h");
        assert_eq!(age(-1.0), "-");
        assert_eq!(age(f64::NAN), "-");
        // Never wider than the column.
        assert!(age(99.0 * 86400.0).len() <= 6);
    }

    #[test]
    fn lifetimes() {
        assert_eq!(lifetime(0.00042), "420us");
        assert_eq!(lifetime(0.0012), "1.2ms");
        assert_eq!(lifetime(0.035), "35ms");
        assert_eq!(lifetime(2.5), "2.5s");
        assert_eq!(lifetime(75.0), "1m15s");
    }

    #[test]
    fn rates() {
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(0.04), "0");
        // A slow leak is not zero.
        assert_eq!(rate(0.2), "0.2");
        assert_eq!(rate(9.94), "9.9");
        assert_eq!(rate(12.4), "12");
        assert_eq!(rate(350.0), "350");
        assert_eq!(rate(4_210.0), "4.2k");
        assert_eq!(rate(35_400.0), "35k");
        assert_eq!(rate(1_250_000.0), "1.2M");
        assert_eq!(rate(-3.0), "-3.0");
        assert_eq!(rate(f64::INFINITY), "-");
        for value in [0.0, 0.5, 9.96, 999.4, 999.6, 9_949.0, 999_499.0, 5e8] {
            assert!(rate(value).len() <= 5, "{value} -> {}", rate(value));
        }
    }

    #[test]
    fn growths() {
        assert_eq!(growth(3.0), "+3.0");
        assert_eq!(growth(-12.0), "-12");
        assert_eq!(growth(0.0), "0");
    }

    #[test]
    fn counts_are_exact_where_they_are_compared() {
        assert_eq!(count(5), "5");
        assert_eq!(count(99_999), "99999");
        assert_eq!(count(123_456), "123k");
        assert_eq!(count(12_345_678), "12.3M");
    }

    #[test]
    fn forecasts_and_percents() {
        assert_eq!(forecast(None), "ok");
        assert_eq!(forecast(Some(0.0)), "FULL");
        assert_eq!(forecast(Some(192.0)), "in 3m12s");
        assert_eq!(percent(0.374), "37%");
        assert_eq!(percent(1.7), "100%");
    }

    #[test]
    fn clipping() {
        assert_eq!(clip("leak-server", 20), "leak-server");
        assert_eq!(clip("leak-server", 5), "leak…");
        assert_eq!(clip("abc", 0), "");
    }
}
