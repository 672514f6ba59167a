//! The few shapes the verbs' arguments take, over lexopt. A hand-written parser with help text
//! kept beside each verb (as ripgrep does) instead of clap: clap and its derived code were a
//! quarter of a megabyte of a binary that every pod event loads.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use lexopt::Arg::{Long, Short};
pub(super) use lexopt::Parser;
use lexopt::ValueExt;

/// `--config FILE`, which the read-only verbs share; a literal so that it can be `concat!`ed
/// into their help.
macro_rules! config_help {
    () => {
        "      --config FILE  multihome's config: a .conf of type multihome, or a conflist with a
                     multihome plugin [default: the first config in /etc/cni/net.d, as a
                     runtime picks it]
"
    };
}
pub(super) use config_help;

/// The value of the option just read, as text.
pub(super) fn string(p: &mut Parser) -> Result<String> {
    Ok(p.value()?.string()?)
}

/// The value of the option just read, as a path (any bytes).
pub(super) fn path(p: &mut Parser) -> Result<PathBuf> {
    Ok(p.value()?.into())
}

/// A boolean option as Go's flag packages take it, so that Multus's DaemonSet arguments carry
/// over: `--name` or `--name=true|false`. It never takes the next argument as its value.
pub(super) fn flag(p: &mut Parser, name: &str) -> Result<bool> {
    let Some(value) = p.optional_value() else {
        return Ok(true);
    };
    match value.to_str() {
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        _ => bail!(
            "--{name}={}: expected true or false",
            value.to_string_lossy()
        ),
    }
}

/// A number of seconds.
pub(super) fn seconds(p: &mut Parser, name: &str) -> Result<u64> {
    let s = string(p)?;
    s.parse()
        .with_context(|| format!("--{name} {s:?}: expected a whole number of seconds"))
}

/// Reads a verb's options to the end: `take` reads the value of each one it knows (by its name
/// without `--`) and answers `false` for the others, which are refused; `--help` prints `help`
/// and makes this `None`, "do not run". Every option is a long one and no verb takes operands.
pub(super) fn options(
    p: &mut Parser,
    help: &str,
    mut take: impl FnMut(&str, &mut Parser) -> Result<bool>,
) -> Result<Option<()>> {
    while let Some(arg) = p.next()? {
        // Owned: `take` names the option while it reads the value from the parser.
        let name = match arg {
            Long("help") | Short('h') => {
                print!("{help}");
                return Ok(None);
            }
            Long(name) => name.to_string(),
            _ => return Err(arg.unexpected().into()),
        };
        if !take(&name, p)? {
            bail!("invalid option '--{name}'");
        }
    }
    Ok(Some(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser(args: &[&str]) -> Parser {
        Parser::from_args(args.iter().copied())
    }

    /// Reads the first option and its flag value, as a verb's loop would.
    fn read_flag(args: &[&str]) -> Result<bool> {
        let mut p = parser(args);
        let _ = p.next()?;
        flag(&mut p, "x")
    }

    #[test]
    fn flags_take_go_forms_and_never_the_next_argument() {
        assert!(read_flag(&["--x"]).unwrap());
        assert!(read_flag(&["--x=true"]).unwrap());
        assert!(!read_flag(&["--x=false"]).unwrap());
        assert!(!read_flag(&["--x=0"]).unwrap());
        let err = read_flag(&["--x=yes"]).unwrap_err().to_string();
        assert_eq!(err, "--x=yes: expected true or false");

        let mut p = parser(&["--x", "false"]);
        p.next().unwrap();
        assert!(flag(&mut p, "x").unwrap());
        assert!(matches!(p.next().unwrap(), Some(lexopt::Arg::Value(v)) if v == "false"));
    }

    #[test]
    fn seconds_name_the_option_and_the_bad_value() {
        let mut p = parser(&["--t", "12"]);
        p.next().unwrap();
        assert_eq!(seconds(&mut p, "t").unwrap(), 12);
        let mut p = parser(&["--t=soon"]);
        p.next().unwrap();
        let err = seconds(&mut p, "t").unwrap_err().to_string();
        assert_eq!(err, "--t \"soon\": expected a whole number of seconds");
    }

    #[test]
    fn options_are_taken_or_refused_and_help_stops_the_verb() {
        let none = |args: &[&str]| options(&mut parser(args), "", |_, _| Ok(false));
        assert!(none(&[]).unwrap().is_some());
        assert!(none(&["--help"]).unwrap().is_none());
        assert!(none(&["-h", "--bogus"]).unwrap().is_none());
        let err = none(&["--json"]).unwrap_err();
        assert_eq!(err.to_string(), "invalid option '--json'");
        let err = none(&["extra"]).unwrap_err();
        assert_eq!(err.to_string(), "unexpected argument \"extra\"");
        let err = none(&["-x"]).unwrap_err();
        assert_eq!(err.to_string(), "invalid option '-x'");

        let mut seen = Vec::new();
        let mut p = parser(&["--a", "1", "--b=2", "--c"]);
        let run = options(&mut p, "", |name, p| {
            seen.push(format!("{name}={}", string(p)?));
            Ok(true)
        });
        assert_eq!(
            run.unwrap_err().to_string(),
            "missing argument for option '--c'"
        );
        assert_eq!(seen, ["a=1", "b=2"]);
    }
}
