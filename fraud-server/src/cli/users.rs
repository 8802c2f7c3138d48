//! `fraud users`: console users (the review console's people). `create` asks for a password
//! (twice, without echo, on a terminal; one line from standard input otherwise), stores its
//! Argon2id hash, and shows the one-time-code secret once: as text, as an `otpauth://` URI
//! and as a QR code for an authenticator app.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context;

use crate::server::keys::Role;
use crate::server::users;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a console user; shows the one-time-code secret once.
    Create {
        /// analyst or admin.
        #[arg(long)]
        role: String,
        /// Login name (unique).
        #[arg(long)]
        name: String,
        /// Read the password from standard input (one line) even on a terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Every console user with role, creation and status.
    List,
    /// Disable a user (their sessions end at their next request).
    Disable {
        /// Login name.
        #[arg(long)]
        name: String,
    },
    /// Enable a disabled user again.
    Enable {
        /// Login name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    /// The users file (default: `<data dir>/users.json`).
    #[arg(long, global = true)]
    users_file: Option<PathBuf>,
    /// The data directory.
    #[arg(long, global = true, default_value = "fraud-data")]
    data_dir: PathBuf,
    /// The service's encryption key file: one-time-code secrets are then stored sealed.
    #[arg(long, global = true)]
    encryption_key_file: Option<PathBuf>,
}

fn password(from_stdin: bool) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    prompt()
}

/// Asks for the password twice on the terminal, without echo.
#[cfg(feature = "prompts")]
fn prompt() -> anyhow::Result<String> {
    let first = rpassword::prompt_password("Password (12 characters or more): ")?;
    let again = rpassword::prompt_password("Password again: ")?;
    if first != again {
        anyhow::bail!("the two passwords differ");
    }
    Ok(first)
}

/// This build has no prompt: a password typed on the terminal would be echoed.
#[cfg(not(feature = "prompts"))]
fn prompt() -> anyhow::Result<String> {
    anyhow::bail!(
        "this build of fraud has no password prompt (Cargo feature `prompts`): send the password on standard input (--password-stdin)"
    )
}

pub fn users_path(users_file: &Option<PathBuf>, data_dir: &std::path::Path) -> PathBuf {
    users_file
        .clone()
        .unwrap_or_else(|| data_dir.join("users.json"))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let path = users_path(&a.users_file, &a.data_dir);
    match a.command {
        Command::Create {
            role,
            name,
            password_stdin,
        } => {
            let role = match role.trim() {
                "analyst" => Role::Analyst,
                "admin" => Role::Admin,
                other => anyhow::bail!("--role `{other}`: expected analyst or admin"),
            };
            let sealer = match &a.encryption_key_file {
                None => None,
                Some(p) => {
                    Some(crate::server::seal::Sealer::from_file(p).map_err(anyhow::Error::msg)?)
                }
            };
            let pw = password(password_stdin)?;
            let e = users::create_user(&path, &name, role, &pw, sealer.as_ref())?;
            let qr = qrcode::QrCode::new(e.uri.as_bytes())
                .map(|c| {
                    c.render::<qrcode::render::unicode::Dense1x2>()
                        .quiet_zone(true)
                        .build()
                })
                .unwrap_or_default();
            super::emit(&format!(
                "created console user `{name}` ({}) in {}\n\
                 one-time-code secret, shown once: enrol it in an authenticator app now\n\
                 secret: {}\n\
                 uri: {}\n{qr}\n",
                role.name(),
                path.display(),
                e.secret,
                e.uri
            ))
        }
        Command::List => {
            let mut out = String::from("name\trole\tcreated\tstatus\n");
            for u in users::read_records(&path)? {
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}\n",
                    u.name,
                    u.role.name(),
                    u.created,
                    if u.disabled { "disabled" } else { "active" }
                ));
            }
            super::emit(&out)
        }
        Command::Disable { name } => {
            users::set_disabled(&path, &name, true)?;
            super::emit(&format!(
                "disabled console user `{name}` in {}\n",
                path.display()
            ))
        }
        Command::Enable { name } => {
            users::set_disabled(&path, &name, false)?;
            super::emit(&format!(
                "enabled console user `{name}` in {}\n",
                path.display()
            ))
        }
    }
}
