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
/// error text (its `Display` text, else its `Debug` text, else its type name),
/// without adding any bound to the function:
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
///         set((&&&::stardust_runtime::__private::ErrText(__stardust_err)).__stardust_error_text());
///     }
/// }
/// ```
///
/// ## A sync function
///
/// ```ignore
/// #[trace]
/// fn add(a: u32, b: u32) -> u32 {
///     a + b
/// }
/// ```
///
/// The body stays where it was, so `return` and `?` keep their meaning:
///
/// ```ignore
/// fn add(a: u32, b: u32) -> u32 {
///     let __stardust_guard = ::stardust_runtime::__private::enter(CALLSITE); // named concat!(module_path!(), "::", "add")
///     a + b
/// }
/// ```
///
/// ## With a tag
///
/// ```ignore
/// #[trace("load", tag = "user={user_id}")]
/// fn load(user_id: u64) -> User {
///     find(user_id)
/// }
/// ```
///
/// ```ignore
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
/// ```ignore
/// #[trace(tag = "user={user_id}")]
/// fn load(user_id: u64) -> Result<User, Error> {
///     let user = find(user_id)?;
///     Ok(user)
/// }
/// ```
///
/// ```ignore
/// fn load(user_id: u64) -> Result<User, Error> {
///     let mut __stardust_guard = ::stardust_runtime::__private::enter(CALLSITE);
///     __stardust_guard.tag_with(|| ::std::format!("user={user_id}")); // before the arguments move
///     let __stardust_ret = ::stardust_runtime::__private::call_once(move || -> Result<User, Error> {
///         let user = find(user_id)?;
///         Ok(user)
///     });
///     RECORD_ERR(|text| __stardust_guard.set_error(text));
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
/// as `cancelled`).
///
/// ```ignore
/// #[trace(tag = "id={id}")]
/// async fn fetch(id: u64) -> Page {
///     download(id).await
/// }
/// ```
///
/// ```ignore
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
/// ```ignore
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
///         RECORD_ERR(::stardust_runtime::__private::set_current_error);
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
/// ```ignore
/// #[trace]
/// fn load<'a>(&'a self, key: &'a str) -> Pin<Box<dyn Future<Output = Result<u32, E>> + Send + 'a>> {
///     Box::pin(async move { self.get(key).await })
/// }
/// ```
///
/// ```ignore
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
///         RECORD_ERR(::stardust_runtime::__private::set_current_error);
///         __stardust_ret
///     }))
/// }
/// ```
///
/// ## `crate = path`
///
/// `#[trace(crate = my_telemetry::rt)]` writes `my_telemetry::rt::__private::...`
/// wherever the listings above say `::stardust_runtime::__private::...`.
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
