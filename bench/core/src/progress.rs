//! A one-line text progress bar, redrawn in place on a terminal.

/// Width of the bar in characters.
pub const BAR_WIDTH: usize = 30;

/// Renders `[#####.....]  label  done/total s  detail` for `fraction` in 0..=1 (clamped).
pub fn render(label: &str, fraction: f64, elapsed_s: f64, total_s: f64, detail: &str) -> String {
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let filled = (fraction * BAR_WIDTH as f64).round() as usize;
    assert!(filled <= BAR_WIDTH);
    format!(
        "[{}{}] {:<36} {:>5.1}/{:.0} s  {}",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled),
        label,
        elapsed_s,
        total_s,
        detail
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_fills_with_fraction() {
        let half = render("etcd writes", 0.5, 5.0, 10.0, "3000/s");
        assert!(half.starts_with(&format!("[{}{}]", "#".repeat(15), ".".repeat(15))));
        assert!(half.contains("etcd writes"));
        assert!(half.contains("3000/s"));
        assert!(render("x", 2.0, 0.0, 1.0, "").starts_with(&format!("[{}]", "#".repeat(30))));
        assert!(render("x", f64::NAN, 0.0, 1.0, "").starts_with(&format!("[{}]", ".".repeat(30))));
    }
}
