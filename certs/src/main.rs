//! `devcerts`: writes `ca.pem`, `ca-key.pem`, `server.pem` and `server-key.pem` into a folder.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Write a development CA and a server certificate it signs (localhost, 127.0.0.1, ::1).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Folder to write into.
    #[arg(long, env = "DEVCERTS_OUT", default_value = "certs")]
    out: PathBuf,
    /// Extra DNS names for the server certificate (repeatable).
    #[arg(long = "name", env = "DEVCERTS_NAMES", value_delimiter = ',')]
    names: Vec<String>,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let certs = devcerts::generate(&args.names).context("generating certificates")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let files = [
        ("ca.pem", &certs.ca_cert_pem),
        ("ca-key.pem", &certs.ca_key_pem),
        ("server.pem", &certs.server_cert_pem),
        ("server-key.pem", &certs.server_key_pem),
    ];
    for (name, _) in &files {
        let path = args.out.join(name);
        if path.exists() && !args.force {
            anyhow::bail!("{} exists; pass --force to replace it", path.display());
        }
    }
    for (name, text) in files {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    println!(
        "serve with --tls-cert {0}/server.pem --tls-key {0}/server-key.pem; clients trust {0}/ca.pem",
        args.out.display()
    );
    Ok(())
}
