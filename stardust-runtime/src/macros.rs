//! `config!()` and `init!()`: the calling crate's name, version and build time, captured
//! where the macro is expanded. (`#[macro_export]` puts them at the crate root.)

/// A [`Config`](crate::Config) from the environment ([`Config::from_env`](crate::Config::from_env)) that also knows the calling
/// crate: its name (the display name unless `StarAppName` says otherwise), its version (sent as
/// the application's version unless `StarVersion` says otherwise) and the time it was built
/// (sent as `Compile`, so the server keeps the newest build's version). Nothing to type:
///
/// ```no_run
/// let _guard = stardust_runtime::init_with(stardust_runtime::config!().app_id("shop")).unwrap();
/// ```
#[macro_export]
macro_rules! config {
    () => {
        $crate::Config::from_env().application(
            ::core::env!("CARGO_PKG_NAME"),
            ::core::env!("CARGO_PKG_VERSION"),
            $crate::__private::build_time_ms!(),
        )
    };
}

/// [`init`](fn@crate::init) with [`config!`](crate::config!): starts the runtime from the environment, knowing the calling
/// crate's name, version and build time.
///
/// ```no_run
/// let _guard = stardust_runtime::init!().expect("stardust");
/// // ... the guard reports the last period when dropped at the end of `main`
/// ```
#[macro_export]
macro_rules! init {
    () => {
        $crate::init_with($crate::config!())
    };
}
