//! Output for people (a table, the default) or scripts (`-o json`, `-o yaml`).

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Prints `items` in `format`; `table` renders the readable form.
pub fn print<T: Serialize>(
    items: &T,
    format: Format,
    table: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    let text = match format {
        Format::Table => table(items),
        Format::Json => format!("{}\n", serde_json::to_string_pretty(items)?),
        Format::Yaml => serde_yaml::to_string(items)?,
    };
    print!("{text}");
    Ok(())
}
