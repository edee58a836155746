//! `aegisctl keys generate`: a new ed25519 signing keypair.

use crate::exit::{CliError, CliResult, Exit};
use aegis_core::keys::Keypair;
use std::io::Write;
use std::path::PathBuf;

/// Options for [`generate`].
#[derive(Debug, Clone)]
pub struct GenerateArgs {
    pub out: PathBuf,
    pub name: String,
}

/// Writes `<out>/<name>.key.json` (secret) and `<out>/<name>.pub.json`; refuses to overwrite.
pub fn generate(args: &GenerateArgs, out: &mut dyn Write) -> CliResult {
    std::fs::create_dir_all(&args.out).map_err(|e| CliError::io(&args.out, e))?;
    let key = Keypair::generate()
        .map_err(|e| CliError::failure(format!("cannot generate a key: {e}")))?;
    let paths = key
        .write_to_dir(&args.out, &args.name)
        .map_err(|e| CliError::failure(format!("cannot write the key: {e}")))?;
    writeln!(out, "key id:      {}", key.key_id())?;
    writeln!(
        out,
        "signing key: {} (secret: keep it private)",
        paths.signing_key.display()
    )?;
    writeln!(
        out,
        "public key:  {} (copy into the gateways' trust directory)",
        paths.public_key.display()
    )?;
    Ok(Exit::Ok)
}
