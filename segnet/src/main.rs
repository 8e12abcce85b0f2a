fn main() {
    eprintln!("segnet: the trainer is not built yet");
    std::process::exit(2);
}
