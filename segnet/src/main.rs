//! The `segnet` binary: parse the command line, run the command, print errors as one line.

use clap::Parser;
use segnet::cli::Cli;

fn main() {
    segnet::malloc::keep_freed_buffers();
    let cli = Cli::parse();
    // Ctrl-C: the training loop saves a checkpoint and stops at the next step boundary; a second
    // Ctrl-C exits at once.
    let _ = ctrlc::set_handler(|| {
        if segnet::train::INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nsegnet: interrupted, saving a checkpoint after this step (Ctrl-C again to quit now)");
    });
    if let Err(e) = segnet::commands::run(cli.command) {
        eprintln!("segnet: error: {e:#}");
        std::process::exit(1);
    }
}
