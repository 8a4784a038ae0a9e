//! The JSON schemas in docs/ are tables whose first column names each field; tests
//! compare those names with what the output really has, so documentation and output
//! cannot drift apart.
use std::collections::BTreeSet;

/// Field names of the table under `heading` (a `### ` line, matched exactly) in `doc`:
/// every backticked name in the first column (`| \`saddr\`, \`sport\` | ...` names two).
pub fn fields(doc: &str, heading: &str) -> BTreeSet<String> {
    let mut lines = doc.lines().skip_while(|line| *line != heading);
    assert!(lines.next().is_some(), "no {heading:?} in the doc");
    let mut fields = BTreeSet::new();
    for line in lines.take_while(|line| !line.starts_with('#')) {
        let Some(first) = line
            .strip_prefix('|')
            .and_then(|rest| rest.split('|').next())
        else {
            continue;
        };
        fields.extend(first.split('`').skip(1).step_by(2).map(str::to_owned));
    }
    fields.remove("field");
    assert!(!fields.is_empty(), "no fields under {heading:?}");
    fields
}

/// The keys of a JSON object.
pub fn keys(value: &serde_json::Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

#[test]
fn reads_the_first_column_of_one_table() {
    let doc = "### A\n\n| field | type |\n|---|---|\n| `x` | int |\n| `y`, `z` | `w` |\n\n### B\n| `q` | |\n";
    assert_eq!(
        fields(doc, "### A"),
        ["x", "y", "z"].map(String::from).into()
    );
}
