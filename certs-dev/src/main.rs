//! certs-dev: writes a development CA and a serving certificate (filled in with the webhook issue).

fn main() {}
