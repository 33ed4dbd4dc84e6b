//! The `dbguard` command.

fn main() {
    eprintln!("dbguard: the command-line interface is not built yet");
    std::process::exit(64);
}
