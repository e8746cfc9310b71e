//! The text tables `call` and `check` print: one row a line, the label padded to a
//! [`LABEL_WIDTH`]-character column, then the value; times in ms with one decimal, `-` for
//! what is not known.

use std::fmt::Display;

/// The width of the label column.
pub const LABEL_WIDTH: usize = 20;

/// Appends `label` padded to [`LABEL_WIDTH`], `value` and a newline.
pub fn row(out: &mut String, label: &str, value: impl Display) {
    out.push_str(&format!("{label:<LABEL_WIDTH$}{value}\n"));
}

/// A time in ms (`12.3 ms`), or `-`.
pub fn ms(value: Option<f64>) -> String {
    value.map_or("-".to_string(), |v| format!("{v:.1} ms"))
}

/// Appends one row a time ([`ms`]).
pub fn ms_rows<'a>(out: &mut String, rows: impl IntoIterator<Item = (&'a str, Option<f64>)>) {
    for (label, value) in rows {
        row(out, label, ms(value));
    }
}

/// `items` joined with commas, or `-` when there is none.
pub fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_pad_the_label_to_one_column() {
        let mut out = String::new();
        row(&mut out, "server", "wss://relay");
        ms_rows(&mut out, [("first RTP", Some(12.345)), ("hung up", None)]);
        row(&mut out, "ice servers", list(&[]));
        row(&mut out, "ice servers", list(&["a".into(), "b".into()]));
        assert_eq!(
            out,
            "server              wss://relay\n\
             first RTP           12.3 ms\n\
             hung up             -\n\
             ice servers         -\n\
             ice servers         a, b\n"
        );
    }
}
