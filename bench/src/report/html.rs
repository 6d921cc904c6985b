//! The self-contained HTML report: a template with the report's JSON embedded, charts drawn by
//! inline script, nothing fetched.

use super::Report;

const TEMPLATE: &str = include_str!("report.html");
const MARKER: &str = "__REPORT_JSON__";

/// The page for `r`.
pub fn render(r: &Report) -> String {
    // `</` inside a script element would end it early; JSON allows `<\/` for the same text.
    let json = serde_json::to_string(r)
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        .replace("</", "<\\/");
    TEMPLATE.replacen(MARKER, &json, 1)
}
