//! The self-contained HTML report: a template with the report's JSON embedded, charts drawn by
//! inline script, nothing fetched.

use super::Report;

const TEMPLATE: &str = include_str!("report.html");
const MARKER: &str = "__REPORT_JSON__";
/// The styles every page of the bench shares, and where a template wants them.
pub const STYLE: &str = include_str!("style.css");
pub const STYLE_MARKER: &str = "__STYLE__";

/// The page for `r`.
pub fn render(r: &Report) -> String {
    render_value(r)
}

/// The page for any document the template reads (a report, or `bench diff`'s report with its
/// `diff` section).
pub fn render_value<T: serde::Serialize>(r: &T) -> String {
    // Markup inside a script element (`</script>`, `<!--`) would end or hide it: every `<`
    // becomes the JSON escape `\u003c`, which reads back as the same text.
    let json = serde_json::to_string(r)
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        .replace('<', "\\u003c");
    TEMPLATE
        .replacen(STYLE_MARKER, STYLE, 1)
        .replacen(MARKER, &json, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_the_data_cannot_break_out_of_the_script() {
        let r = Report {
            tool: "bench".into(),
            title: "</script><!--<script>alert(1)".into(),
            started: String::new(),
            command: String::new(),
            params: serde_json::json!({}),
            machine: Default::default(),
            systems: vec![],
            steps: vec![],
        };
        let page = render(&r);
        assert!(!page.contains("__REPORT_JSON__"));
        assert!(!page.contains(STYLE_MARKER) && page.contains("svg.chart"));
        assert!(!page.contains("</script><!--"));
        let open = "<script type=\"application/json\" id=\"report-data\">";
        let start = page.find(open).expect("data element") + open.len();
        let end = start + page[start..].find("</script>").expect("script end");
        let back: Report = serde_json::from_str(&page[start..end]).expect("the JSON reads back");
        assert_eq!(back, r);
    }
}
