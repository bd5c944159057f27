//! Shell completions and man pages, generated from the clap definitions so
//! they always describe every subcommand and flag there is.

use std::path::{Path, PathBuf};

use clap::{Command, CommandFactory};

use crate::AnyResult;

/// Writes the completion script of `pidbusctl` for `shell` to stdout; for
/// bash, with live completion of the positional names, paths, interfaces
/// and members of the object commands (from `pidbusctl complete`).
pub fn completions(mut pidbusctl: Command, shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut pidbusctl, "pidbusctl", &mut std::io::stdout());
    if shell == clap_complete::Shell::Bash {
        print!("{BASH_LIVE}");
    }
}

/// Bash: the object commands' positional arguments come from the live bus
/// (`pidbusctl complete …`); everything else from clap's completion.
const BASH_LIVE: &str = r#"
_pidbusctl_live() {
    local cur="${COMP_WORDS[COMP_CWORD]}" words=() w i
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${COMP_WORDS[i]}"
        case "$w" in
            --address|--timeout|--args-json|--match) ((i++)) ;;
            -*) ;;
            *) words+=("$w") ;;
        esac
    done
    local address=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        [[ "${COMP_WORDS[i]}" == --address ]] && address=(--address "${COMP_WORDS[i+1]}")
        [[ "${COMP_WORDS[i]}" == --system || "${COMP_WORDS[i]}" == --user ]] && address=("${COMP_WORDS[i]}")
    done
    case "${words[0]}" in
        call|introspect|get-property|set-property|tree|status|wait|monitor)
            if [[ "$cur" != -* ]]; then
                local n=${#words[@]} kind=""
                case "$n" in
                    1) kind=(names) ;;
                    2) kind=(paths "${words[1]}") ;;
                    3) kind=(interfaces "${words[1]}" "${words[2]}") ;;
                    4) kind=(members "${words[1]}" "${words[2]}" "${words[3]}") ;;
                esac
                if [[ -n "$kind" ]]; then
                    COMPREPLY=($(compgen -W "$(pidbusctl "${address[@]}" complete "${kind[@]}" 2>/dev/null)" -- "$cur"))
                    return 0
                fi
            fi
            ;;
    esac
    _pidbusctl "$@"
}
complete -F _pidbusctl_live -o bashdefault -o default pidbusctl
"#;

/// Writes `man1/pidbusctl.1`, `man1/pidbusctl-SUBCOMMAND.1` for every
/// subcommand, and `man8/pidbusd.8` under `dir`; returns the files written.
pub fn man_pages(pidbusctl: Command, dir: &Path) -> AnyResult<Vec<PathBuf>> {
    let section = |name: &str| -> AnyResult<PathBuf> {
        let path = dir.join(name);
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(path)
    };
    let man1 = section("man1")?;
    let man8 = section("man8")?;
    let mut written = Vec::new();
    // Built first: subcommands then carry display names like pidbusctl-call.
    let mut pidbusctl = pidbusctl.disable_help_subcommand(true);
    pidbusctl.build();
    write_pages(pidbusctl, "1", &man1, &mut written)?;
    let pidbusd = pidbus_broker::cli::DaemonArgs::command();
    write_pages(pidbusd, "8", &man8, &mut written)?;
    Ok(written)
}

/// The page of `command` and, recursively, of its visible subcommands.
fn write_pages(
    command: Command,
    section: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> AnyResult {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), section, dir, written)?;
    }
    let page = clap_mangen::Man::new(command).section(section);
    let path = page
        .generate_to(dir)
        .map_err(|e| format!("cannot write a man page into {}: {e}", dir.display()))?;
    written.push(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of `command` and its subcommands, with the path of
    /// subcommands leading to it, that has no help text.
    fn undescribed(command: &Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            if arg.get_help().is_none() && !arg.is_hide_set() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in command.get_subcommands() {
            if sub.get_about().is_none() {
                missing.push(format!("{path} {} (the subcommand)", sub.get_name()));
            }
            undescribed(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }

    #[test]
    fn every_flag_argument_and_subcommand_has_a_description() {
        for command in [
            crate::Args::command(),
            pidbus_broker::cli::DaemonArgs::command(),
        ] {
            command.clone().debug_assert();
            let mut missing = Vec::new();
            let name = command.get_name().to_owned();
            undescribed(&command, &name, &mut missing);
            assert!(missing.is_empty(), "no help text: {missing:?}");
        }
    }
}
