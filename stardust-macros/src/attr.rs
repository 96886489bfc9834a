//! Parsing of the `#[trace(...)]` arguments.
//!
//! Grammar (arguments are comma separated, a trailing comma is accepted):
//!
//! ```text
//! trace-args := [ STRING ] ( "," named )* [ "," ]
//!             | named ( "," named )* [ "," ]
//! named      := "name" "=" STRING | "tag" "=" STRING | "crate" "=" PATH
//! ```
//!
//! Only syntax is checked here. Checks that need the function (the tag's
//! placeholders must name its parameters) live in [`crate::tag`].

use syn::parse::{Parse, ParseStream};
use syn::{Lit, LitStr, Path, Token};

mod kw {
    syn::custom_keyword!(name);
    syn::custom_keyword!(tag);
}

/// The parsed arguments of one `#[trace]` attribute.
#[derive(Default)]
pub(crate) struct TraceArgs {
    /// The span name, from `"name"` or `name = "name"`.
    pub(crate) name: Option<LitStr>,
    /// The tag format string, from `tag = "..."`.
    pub(crate) tag: Option<LitStr>,
    /// The path to the runtime crate, from `crate = path`.
    pub(crate) krate: Option<Path>,
}

impl Parse for TraceArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = TraceArgs::default();
        let mut first = true;
        while !input.is_empty() {
            if input.peek(Lit) {
                // A bare literal: the positional span name, allowed only first.
                let lit: Lit = input.parse()?;
                if !first {
                    return Err(match args.name {
                        Some(_) => syn::Error::new(
                            lit.span(),
                            "the span name is already given; \
                             `#[trace]` takes at most one name",
                        ),
                        None => syn::Error::new(
                            lit.span(),
                            "the span name may be given positionally only as the first argument; \
                             write `name = \"...\"` here",
                        ),
                    });
                }
                args.name = Some(span_name(lit)?);
            } else {
                let lookahead = input.lookahead1();
                if lookahead.peek(kw::name) {
                    let key = input.parse::<kw::name>()?;
                    input.parse::<Token![=]>()?;
                    let lit: Lit = input.parse().map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            "expected a string literal, as in `name = \"load_user\"`",
                        )
                    })?;
                    if args.name.is_some() {
                        return Err(syn::Error::new(key.span, "duplicate `name` argument"));
                    }
                    args.name = Some(span_name(lit)?);
                } else if lookahead.peek(kw::tag) {
                    let key = input.parse::<kw::tag>()?;
                    input.parse::<Token![=]>()?;
                    let lit: Lit = input.parse().map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            "expected a string literal, as in `tag = \"user={user_id}\"`",
                        )
                    })?;
                    let Lit::Str(lit) = lit else {
                        return Err(syn::Error::new(
                            lit.span(),
                            "`tag` must be a string literal, as in `tag = \"user={user_id}\"`",
                        ));
                    };
                    if args.tag.is_some() {
                        return Err(syn::Error::new(key.span, "duplicate `tag` argument"));
                    }
                    args.tag = Some(lit);
                } else if lookahead.peek(Token![crate]) {
                    let key = input.parse::<Token![crate]>()?;
                    input.parse::<Token![=]>()?;
                    let path = input.call(Path::parse_mod_style).map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            "expected a path to the runtime crate, as in `crate = ::stardust_runtime`",
                        )
                    })?;
                    if args.krate.is_some() {
                        return Err(syn::Error::new(key.span, "duplicate `crate` argument"));
                    }
                    args.krate = Some(path);
                } else if first {
                    return Err(syn::Error::new(
                        input.span(),
                        "expected one of: a string literal (the span name), `name`, `tag`, `crate`",
                    ));
                } else {
                    return Err(lookahead.error());
                }
            }
            first = false;
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(args)
    }
}

/// Checks that a literal is a usable span name: a non-empty string.
fn span_name(lit: Lit) -> syn::Result<LitStr> {
    match lit {
        Lit::Str(s) if s.value().is_empty() => {
            Err(syn::Error::new(s.span(), "the span name must not be empty"))
        }
        Lit::Str(s) => Ok(s),
        other => Err(syn::Error::new(
            other.span(),
            "the span name must be a string literal, as in `#[trace(\"load_user\")]`",
        )),
    }
}
