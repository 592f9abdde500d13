//! `mlmesh token`: end-user JWTs for the ingress gateway (istio/auth/), so
//! the README's authenticated `curl`s work, and the JWKS of a real key.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use identity::{DEMO_ISSUER, Minter};

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The customer the token is for (its `sub` claim; the frontend's user id).
    #[arg(long, required_unless_present = "jwks")]
    user: Option<String>,
    /// The customer's group (its `group` claim): `beta` puts them in the
    /// candidate cohort.
    #[arg(long)]
    group: Option<String>,
    /// How long the token is valid (at most 30 days).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// An RSA private key in PEM to sign with (`openssl genpkey -algorithm
    /// RSA -pkeyopt rsa_keygen_bits:2048 -out key.pem`). Without it the
    /// committed demo key signs, which anyone can use.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The `iss` claim; the RequestAuthentication's `issuer` must equal it.
    #[arg(long, default_value = DEMO_ISSUER)]
    issuer: String,
    /// Print the key's public JWKS (for a RequestAuthentication's `jwks`)
    /// instead of a token.
    #[arg(long)]
    jwks: bool,
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let minter = match &args.key {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Minter::from_pem(&pem, &args.issuer)
                .with_context(|| format!("loading {}", path.display()))?
        }
        None => Minter::from_pem(identity::DEMO_KEY_PEM.as_bytes(), &args.issuer)
            .context("loading the demo key")?,
    };
    let out = if args.jwks {
        minter.jwks_json()
    } else {
        let user = args.user.as_deref().unwrap_or_default();
        let token = minter
            .mint(
                user,
                args.group.as_deref(),
                args.ttl,
                mesh_kit::clock::unix_now(),
            )
            .context("minting the token")?;
        if args.key.is_none() {
            // stderr, so `TOKEN=$(mlmesh token --user 42)` still captures
            // only the token.
            eprintln!(
                "mlmesh token: signed with the committed DEMO key, which anyone can use; --key FILE for a real one"
            );
        }
        token
    };
    writeln!(std::io::stdout(), "{out}").context("writing to stdout")?;
    Ok(())
}
