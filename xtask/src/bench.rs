//! `cargo xtask bench`: overhead benchmark (being written).
#[derive(clap::Args)]
pub struct Options {}

pub fn run(_: Options) -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}
