//! The shape `async-trait` generates: a plain fn returning a boxed future, whose body
//! ends in `Box::pin(async move { .. })`. The boxed future is what gets instrumented.
#![deny(warnings)]

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use stardust_runtime::trace;

fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

trait Store: Sync {
    fn load<'a>(
        &'a self,
        key: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<u32, String>> + Send + 'a>>;
    fn len(&self) -> BoxFuture<'_, usize>;
    fn local(&self) -> Pin<Box<dyn Future<Output = u32> + '_>>;
}

struct Mem(Vec<(String, u32)>);

impl Store for Mem {
    // What `#[async_trait]` expands `async fn load(&self, key: &str) -> Result<u32, String>` to.
    #[trace(tag = "key={key}")]
    fn load<'a>(
        &'a self,
        key: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<u32, String>> + Send + 'a>> {
        Box::pin(async move {
            let __self = self;
            let key = key;
            let __ret: Result<u32, String> = {
                for (k, v) in &__self.0 {
                    if k == key {
                        return Ok(*v);
                    }
                }
                Err(format!("missing {key}"))
            };
            #[allow(unreachable_code)]
            __ret
        })
    }

    #[trace]
    fn len(&self) -> BoxFuture<'_, usize> {
        let n = self.0.len();
        Box::pin(async move { n })
    }

    #[trace]
    fn local(&self) -> Pin<Box<dyn Future<Output = u32> + '_>> {
        std::boxed::Box::pin(async move { self.0.iter().map(|(_, v)| v).sum() })
    }
}

fn main() {
    let store = Mem(vec![("a".into(), 1), ("b".into(), 2)]);
    assert_eq!(block_on(store.load("b")), Ok(2));
    assert_eq!(block_on(store.load("c")), Err("missing c".into()));
    assert_eq!(block_on(store.len()), 2);
    assert_eq!(block_on(store.local()), 3);
}
