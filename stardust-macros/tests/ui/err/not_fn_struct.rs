use stardust_runtime::trace;

#[trace]
struct Config {
    port: u16,
}

fn main() {
    let _ = Config { port: 80 }.port;
}
