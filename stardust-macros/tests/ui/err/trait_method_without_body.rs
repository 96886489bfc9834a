use stardust_runtime::trace;

trait Store {
    #[trace]
    fn load(&self, key: &str) -> u32;
}

fn main() {}
