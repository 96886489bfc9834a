//! Every receiver, in inherent impls, trait impls and trait default bodies.
#![deny(warnings)]

use stardust_runtime::trace;

#[derive(Clone, Debug, Default)]
struct Counter {
    n: u32,
    items: Vec<String>,
}

impl Counter {
    #[trace(tag = "counter={self:?}")]
    fn by_ref(&self) -> u32 {
        self.n
    }

    #[trace]
    fn by_mut(&mut self) -> u32 {
        self.n += 1;
        self.n
    }

    #[trace]
    fn by_value(self) -> u32 {
        self.n
    }

    #[trace]
    fn by_mut_value(mut self) -> u32 {
        self.n += 1;
        self.n
    }

    #[trace]
    fn boxed(self: Box<Self>) -> u32 {
        self.n
    }

    #[trace]
    fn associated() -> Self {
        Self::default()
    }

    // A reference derived from `&mut self`, returned through the Result wrapper.
    #[trace]
    fn first_mut(&mut self) -> Result<&mut String, String> {
        self.items.first_mut().ok_or_else(|| "empty".to_owned())
    }

    #[trace]
    fn boxed_result(self: Box<Self>) -> Result<u32, String> {
        Ok(self.n)
    }
}

trait Named {
    fn name(&self) -> String;

    #[trace]
    fn shout(&self) -> String {
        self.name().to_uppercase()
    }
}

impl Named for Counter {
    #[trace(tag = "n={self:?}")]
    fn name(&self) -> String {
        format!("counter {}", self.n)
    }
}

fn main() {
    let mut c = Counter {
        n: 0,
        items: vec!["a".to_owned()],
    };
    assert_eq!(c.by_ref(), 0);
    assert_eq!(c.by_mut(), 1);
    c.first_mut().unwrap().push('b');
    assert_eq!(c.items[0], "ab");
    assert_eq!(c.clone().by_value(), 1);
    assert_eq!(c.clone().by_mut_value(), 2);
    assert_eq!(Box::new(c.clone()).boxed(), 1);
    assert_eq!(Box::new(c.clone()).boxed_result(), Ok(1));
    assert_eq!(Counter::associated().n, 0);
    assert_eq!(c.shout(), "COUNTER 1");
}
