//! Multiplexing: every line a child prints goes to the supervisor's stdout
//! prefixed with the child's name, as foreman does; the supervisor's own
//! lines use the name `supervisor`.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Width of the name column: "supervisor" or the longest child name.
pub fn name_width(names: impl IntoIterator<Item = usize>) -> usize {
    names
        .into_iter()
        .chain(["supervisor".len()])
        .max()
        .unwrap_or(10)
}

/// Prints one line with a name prefix.
pub fn line(width: usize, name: &str, text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{name:<width$} | {text}");
    let _ = stdout.flush();
}

/// Copies `stream` line by line to stdout under `name` until it closes.
pub async fn forward(width: usize, name: String, stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(text)) = lines.next_line().await {
        line(width, &name, &text);
    }
}
