//! The `#[trace]` attribute of [stardust-rs](https://github.com/stardust-rs/stardust-rs).
//!
//! Do not depend on this crate directly: use it through `stardust-runtime`, which
//! re-exports it as `stardust_runtime::trace` and pins it to its own version.
//!
//! ```
//! use stardust_runtime::trace;
//!
//! #[trace("order/load", tag = "id={id}")]
//! fn load_order(id: u64) -> Result<String, std::io::Error> {
//!     Ok(format!("order {id}"))
//! }
//!
//! assert_eq!(load_order(7).unwrap(), "order 7");
//! ```
//!
//! Every call of a traced function is a span: it opens when the function is called
//! (for an `async fn`, when its future is first polled), it is the thread's current
//! span while the body runs, so spans opened inside are its children, and it closes
//! when the function returns (when the future completes). A returned `Err` marks the
//! span as an error; see [`macro@trace`] for the exact code each form expands to.
//!
//! The crate has three parts: `attr` parses the attribute's arguments, `tag` checks
//! the tag's format string against the function's parameters, and `expand` writes
//! the instrumented function.

mod attr;
mod expand;
mod tag;

use proc_macro::TokenStream;

/// Traces every call of a function as a span.
///
/// # Arguments
///
/// | form | meaning |
/// | --- | --- |
/// | `#[trace]` | the span is named after the function's path: `concat!(module_path!(), "::", "fn_name")` |
/// | `#[trace("name")]` or `#[trace(name = "name")]` | the span's name; a non-empty string literal. The positional form must come first |
/// | `tag = "format string"` | the span's data tag, a format string whose placeholders name the function's parameters: `"user={user_id} q={query:?}"`. Positional placeholders (`{}`, `{0}`, `.*`) are errors. It is formatted when the span starts, before the body runs, and only if the span is sampled |
/// | `crate = path` | where the runtime is, when it is not `::stardust_runtime` (for a crate that re-exports it) |
///
/// Arguments are separated by commas and may come in any order; each may be given
/// once.
///
/// # Expansions
///
/// The expansion only reaches the runtime through `<crate>::__private`, names
/// everything else by its full path (`::core::...`, `::std::...`), and uses locals
/// the function's own code cannot see, so user items named `Result`, `Option`,
/// `Box`, `Span` or `trace` do not disturb it. Attributes, visibility and the
/// signature are kept as written; inner attributes stay at the top of the body.
///
/// In the listings below, `CALLSITE` stands for a block that declares the
/// operation's callsite once and takes its address:
///
/// ```text
/// {
///     static __STARDUST_CALLSITE: ::stardust_runtime::__private::Callsite =
///         ::stardust_runtime::__private::Callsite::new("name");
///     &__STARDUST_CALLSITE
/// }
/// ```
///
/// and `RECORD_ERR(set)` for the code that turns a `Result::Err` into the span's
/// error text (its `Display` text, else its `Debug` text, else its type name) and the
/// error type's short name (for the `ex:<Type>` exception statistics), without adding any
/// bound to the function:
///
/// ```text
/// {
///     #[allow(unused_imports)]
///     use ::stardust_runtime::__private::{
///         ErrTextDebug as _, ErrTextDisplay as _, ErrTextTypeName as _, ProbeOther as _,
///         ProbeResult as _,
///     };
///     if let ::core::option::Option::Some(__stardust_err) =
///         (&::stardust_runtime::__private::ResultProbe(&__stardust_ret)).__stardust_err()
///     {
///         set(
///             (&&&::stardust_runtime::__private::ErrText(__stardust_err)).__stardust_error_text(),
///             ::stardust_runtime::__private::error_kind(__stardust_err),
///         );
///     }
/// }
/// ```
///
/// Each section shows a use that runs (its doctest checks what is reported, with
/// [`testing::record`], which runs a closure with the runtime started and returns the
/// operations it reported) and then the code it expands to.
///
/// [`testing::record`]: https://docs.rs/stardust-runtime/latest/stardust_runtime/testing/fn.record.html
///
/// ## A sync function
///
/// ```
/// use stardust_runtime::trace;
///
/// #[trace]
/// fn add(a: u32, b: u32) -> u32 {
///     a + b
/// }
/// use stardust_runtime::testing::record;
///
/// let ops = record(|| assert_eq!(add(2, 3), 5)).builders();
/// assert!(ops[0].name.ends_with("::add")); // the function's path
/// assert_eq!((ops[0].total, ops[0].errors), (1, 0));
/// ```
///
/// The body stays where it was, so `return` and `?` keep their meaning:
///
/// ```text
/// fn add(a: u32, b: u32) -> u32 {
///     let __stardust_guard = ::stardust_runtime::__private::enter(CALLSITE); // named concat!(module_path!(), "::", "add")
///     a + b
/// }
/// ```
///
/// ## A name
///
/// ```
/// use stardust_runtime::trace;
///
/// #[trace("orders/load")]
/// fn load() {}
///
/// #[trace(name = "orders/store")]
/// fn store() {}
/// use stardust_runtime::testing::record;
///
/// let ops = record(|| { load(); store(); store(); }).builders();
/// assert_eq!((ops[0].name.as_str(), ops[0].total), ("orders/load", 1));
/// assert_eq!((ops[1].name.as_str(), ops[1].total), ("orders/store", 2));
/// ```
///
/// Both forms expand as above, with the callsite named `"orders/load"` and
/// `"orders/store"` instead of the function's path.
///
/// ## With a tag
///
/// ```
/// use stardust_runtime::trace;
/// # pub struct User(u64);
/// # fn find(id: u64) -> User { User(id) }
///
/// #[trace("load", tag = "user={user_id}")]
/// fn load(user_id: u64) -> User {
///     find(user_id)
/// }
/// use stardust_runtime::testing::record;
///
/// let ops = record(|| assert_eq!(load(7).0, 7)).builders();
/// let sample = &ops[0].samples.as_ref().unwrap()[0]; // the first span of a period is sampled
/// assert_eq!(sample.tag.as_deref(), Some("user=7"));
/// ```
///
/// ```text
/// fn load(user_id: u64) -> User {
///     let mut __stardust_guard = ::stardust_runtime::__private::enter(CALLSITE); // named "load"
///     __stardust_guard.tag_with(|| ::std::format!("user={user_id}"));
///     find(user_id)
/// }
/// ```
///
/// A tag without placeholders becomes `::std::string::String::from("...")`.
///
/// ## A function returning a `Result`
///
/// When the last segment of the return type's path is `Result` (`Result<T, E>`,
/// `io::Result<T>`, `anyhow::Result<T>`, ...), the body runs in a closure so that an
/// early `return Err(..)` or `?` is seen too:
///
/// ```
/// use stardust_runtime::trace;
/// # #[derive(Debug)]
/// # pub struct User(u64);
/// # #[derive(Debug)]
/// # pub struct Error;
/// # impl std::fmt::Display for Error {
/// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("no such user") }
/// # }
/// # fn find(id: u64) -> Result<User, Error> { if id == 0 { Err(Error) } else { Ok(User(id)) } }
///
/// #[trace(tag = "user={user_id}")]
/// fn load(user_id: u64) -> Result<User, Error> {
///     let user = find(user_id)?;
///     Ok(user)
/// }
/// use stardust_runtime::testing::record;
///
/// let ops = record(|| {
///     assert!(load(7).is_ok());
///     assert!(load(0).is_err()); // left by `?`
/// }).builders();
/// assert_eq!((ops[0].total, ops[0].errors), (2, 1));
/// let failed = &ops[0].error_samples.as_ref().unwrap()[0];
/// assert_eq!(failed.error.as_deref(), Some("no such user")); // the error's `Display` text
/// let first = &ops[0].samples.as_ref().unwrap()[0];
/// assert_eq!(first.tag.as_deref(), Some("user=7")); // formatted before the body ran
/// ```
///
/// ```text
/// fn load(user_id: u64) -> Result<User, Error> {
///     let mut __stardust_guard = ::stardust_runtime::__private::enter(CALLSITE);
///     __stardust_guard.tag_with(|| ::std::format!("user={user_id}")); // before the arguments move
///     let __stardust_ret = ::stardust_runtime::__private::call_once(move || -> Result<User, Error> {
///         let user = find(user_id)?;
///         Ok(user)
///     });
///     RECORD_ERR(|text, kind| {
///         ::stardust_runtime::__private::set_error_of(&mut __stardust_guard, text, kind)
///     });
///     __stardust_ret
/// }
/// ```
///
/// `call_once` takes the closure as `FnOnce`, so the body may return borrows of
/// `&mut self` and other arguments. `-> R` is left out when `R` contains `impl Trait`.
/// A closure inside an `unsafe fn` is an unsafe context like the body itself.
///
/// ## An `async fn`
///
/// The span follows the future: it opens at the first poll, is current while the
/// future is polled and closes when it completes (dropped before that, it is recorded
/// as `cancelled`). No async runtime is needed: the example drives the futures with a
/// hidden ten-line `block_on`.
///
/// ```
/// use stardust_runtime::trace;
/// # pub struct Page(u64);
/// # async fn download(id: u64) -> Page { Page(id) }
///
/// #[trace(tag = "id={id}")]
/// async fn fetch(id: u64) -> Page {
///     download(id).await
/// }
/// # // Enough of an executor for futures that never wait.
/// # fn block_on<F: std::future::Future>(fut: F) -> F::Output {
/// #     let mut fut = std::pin::pin!(fut);
/// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
/// #     loop {
/// #         if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) { return v; }
/// #     }
/// # }
/// use stardust_runtime::testing::record;
///
/// let ops = record(|| {
///     assert_eq!(block_on(fetch(3)).0, 3);
///     let _never_polled = fetch(4); // no span: it would open at the first poll
/// }).builders();
/// assert!(ops[0].name.ends_with("::fetch"));
/// assert_eq!(ops[0].total, 1);
/// assert_eq!(ops[0].samples.as_ref().unwrap()[0].tag.as_deref(), Some("id=3"));
/// ```
///
/// ```text
/// async fn fetch(id: u64) -> Page {
///     ::stardust_runtime::__private::instrument(CALLSITE, async move {
///         ::stardust_runtime::__private::tag_current(|| ::std::format!("id={id}"));
///         #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::empty_loop)]
///         if false {
///             // Never runs: fixes the block's output type, so `?` and `return` infer as in the fn.
///             let __stardust_fake: Page = loop {};
///             return __stardust_fake;
///         }
///         download(id).await
///     })
///     .await
/// }
/// ```
///
/// With a `Result` return type, the body becomes an inner `async move` block whose
/// output is checked:
///
/// ```
/// use stardust_runtime::trace;
/// # pub struct Page(u64);
/// # pub type Error = String;
/// # async fn download(id: u64) -> Result<Page, Error> {
/// #     if id == 0 { Err("not found".to_string()) } else { Ok(Page(id)) }
/// # }
///
/// #[trace("page/fetch", tag = "id={id}")]
/// async fn fetch(id: u64) -> Result<Page, Error> {
///     let page = download(id).await?;
///     Ok(page)
/// }
/// # // Enough of an executor for futures that never wait.
/// # fn block_on<F: std::future::Future>(fut: F) -> F::Output {
/// #     let mut fut = std::pin::pin!(fut);
/// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
/// #     loop {
/// #         if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) { return v; }
/// #     }
/// # }
/// use stardust_runtime::testing::record;
///
/// let rec = record(|| {
///     assert!(block_on(fetch(1)).is_ok());
///     assert!(block_on(fetch(0)).is_err());
/// });
/// assert_eq!((rec.count("page/fetch"), rec.errors("page/fetch")), (2, 1));
/// let failed = &rec.builder("page/fetch").unwrap().error_samples.unwrap()[0];
/// assert_eq!(failed.error.as_deref(), Some("not found"));
/// // The error also counts under its type, for Stardust's exception statistics.
/// assert_eq!((rec.count("ex:String"), rec.errors("ex:String")), (1, 0));
/// ```
///
/// ```text
/// async fn fetch(id: u64) -> Result<Page, Error> {
///     ::stardust_runtime::__private::instrument(CALLSITE, async move {
///         ::stardust_runtime::__private::tag_current(|| ::std::format!("id={id}"));
///         let __stardust_ret = async move {
///             #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::empty_loop)]
///             if false {
///                 let __stardust_fake: Result<Page, Error> = loop {};
///                 return __stardust_fake;
///             }
///             let page = download(id).await?;
///             Ok(page)
///         }
///         .await;
///         RECORD_ERR(::stardust_runtime::__private::set_current_error_of);
///         __stardust_ret
///     })
///     .await
/// }
/// ```
///
/// `async fn` in traits, with default bodies, expand the same way. The type-fixing
/// `if false` is left out when the function declares no return type or its return
/// type contains `impl Trait`.
///
/// ## The `async-trait` shape
///
/// A sync function whose body ends in `<path>::pin(async move { .. })` (what
/// `#[async_trait]` generates) has its boxed future instrumented, not the creation
/// of the box. The output type is read from `Output = R` in the return type:
///
/// ```
/// use std::future::Future;
/// use std::pin::Pin;
/// use stardust_runtime::trace;
/// # pub type E = String;
///
/// struct Cache;
///
/// impl Cache {
///     async fn get(&self, key: &str) -> Result<u32, E> {
///         key.parse().map_err(|_| format!("bad key {key}"))
///     }
///
///     #[trace("cache/load")]
///     fn load<'a>(&'a self, key: &'a str) -> Pin<Box<dyn Future<Output = Result<u32, E>> + Send + 'a>> {
///         Box::pin(async move { self.get(key).await })
///     }
/// }
/// # // Enough of an executor for futures that never wait.
/// # fn block_on<F: std::future::Future>(fut: F) -> F::Output {
/// #     let mut fut = std::pin::pin!(fut);
/// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
/// #     loop {
/// #         if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) { return v; }
/// #     }
/// # }
/// use stardust_runtime::testing::record;
///
/// let ops = record(|| {
///     let cache = Cache;
///     let pending = cache.load("12"); // no span yet: the future has not run
///     assert_eq!(block_on(pending), Ok(12));
///     assert!(block_on(cache.load("x")).is_err());
/// }).builders();
/// assert_eq!((ops[0].name.as_str(), ops[0].total, ops[0].errors), ("cache/load", 2, 1));
/// ```
///
/// ```text
/// fn load<'a>(&'a self, key: &'a str) -> Pin<Box<dyn Future<Output = Result<u32, E>> + Send + 'a>> {
///     Box::pin(::stardust_runtime::__private::instrument(CALLSITE, async move {
///         let __stardust_ret = async move {
///             #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::empty_loop)]
///             if false {
///                 let __stardust_fake: Result<u32, E> = loop {};
///                 return __stardust_fake;
///             }
///             self.get(key).await
///         }
///         .await;
///         RECORD_ERR(::stardust_runtime::__private::set_current_error_of);
///         __stardust_ret
///     }))
/// }
/// ```
///
/// ## `crate = path`
///
/// `#[trace(crate = my_telemetry::rt)]` writes `my_telemetry::rt::__private::...`
/// wherever the listings above say `::stardust_runtime::__private::...`: for a crate
/// that re-exports the runtime, so that its users need not depend on it themselves.
///
/// ```
/// mod my_telemetry {
///     pub use ::stardust_runtime as rt;
/// }
///
/// #[my_telemetry::rt::trace("job/run", crate = my_telemetry::rt)]
/// fn run() -> u32 {
///     7
/// }
/// use stardust_runtime::testing::record;
///
/// let ops = record(|| assert_eq!(run(), 7)).builders();
/// assert_eq!((ops[0].name.as_str(), ops[0].total), ("job/run", 1));
/// ```
///
/// ```text
/// fn run() -> u32 {
///     let __stardust_guard = my_telemetry::rt::__private::enter({
///         static __STARDUST_CALLSITE: my_telemetry::rt::__private::Callsite =
///             my_telemetry::rt::__private::Callsite::new("job/run");
///         &__STARDUST_CALLSITE
///     });
///     7
/// }
/// ```
///
/// # Errors
///
/// Misuse is a compile error on the offending token: the attribute on anything but a
/// function with a body, on a `const fn`, an unknown or repeated argument, a span
/// name that is not a non-empty string literal, a tag that is not a valid format
/// string or has a placeholder that names no parameter. The function is still
/// emitted unchanged next to the error, so no second error follows from it.
///
/// If the function's body does not parse, the signature is still instrumented and
/// the body passed on as it is, so the error shown is the compiler's own error in
/// the user's code.
#[proc_macro_attribute]
pub fn trace(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::trace(args.into(), item.into()).into()
}

/// Expands to the time the calling crate is compiled, as Unix milliseconds (UTC), an `i64`
/// literal; `SOURCE_DATE_EPOCH` (seconds), when set, is used instead, for reproducible
/// builds. `stardust_runtime::config!()` sends it as the application's build time
/// (`Compile`). Not for direct use.
#[doc(hidden)]
#[proc_macro]
pub fn build_time_ms(input: TokenStream) -> TokenStream {
    if !input.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "build_time_ms!() takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let from_env = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .map(|secs| secs.saturating_mul(1000));
    let ms = from_env.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    });
    let lit = proc_macro2::Literal::i64_suffixed(ms);
    quote::quote!(#lit).into()
}
