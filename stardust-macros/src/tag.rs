//! Checking of the `tag = "..."` format string against the function's parameters.
//!
//! The tag is expanded to `::std::format!("...")` with the user's literal, so the
//! placeholders capture the parameters implicitly. Before that, every placeholder is
//! checked here so that a mistake is reported by `#[trace]` in terms of the
//! function (`{nope}` names no parameter) instead of by `format!` in terms of the
//! expansion (`cannot find value nope in this scope`).

use syn::ext::IdentExt;
use syn::{FnArg, LitStr, Pat, Signature};

/// What the tag turned out to hold.
pub(crate) enum Tag {
    /// No placeholders: the text, with `{{` and `}}` already unescaped.
    Plain(String),
    /// At least one placeholder: pass the literal to `format!` as it is.
    Format,
}

/// Validates `lit` as a tag for a function with signature `sig`.
pub(crate) fn check(lit: &LitStr, sig: &Signature) -> syn::Result<Tag> {
    let params = parameter_names(sig);
    let text = lit.value();
    let err = |msg: String| syn::Error::new(lit.span(), msg);
    let mut plain = String::new();
    let mut has_placeholder = false;
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        match c {
            '{' if matches!(chars.peek(), Some((_, '{'))) => {
                chars.next();
                plain.push('{');
            }
            '}' if matches!(chars.peek(), Some((_, '}'))) => {
                chars.next();
                plain.push('}');
            }
            '}' => {
                return Err(err(format!(
                    "invalid format string in tag: unmatched `}}` at byte {start}; \
                     write `}}}}` for a literal brace"
                )));
            }
            '{' => {
                let Some(len) = text[start + 1..].find('}') else {
                    return Err(err(format!(
                        "invalid format string in tag: `{{` at byte {start} is never closed; \
                         write `{{{{` for a literal brace"
                    )));
                };
                let inner = &text[start + 1..start + 1 + len];
                for _ in 0..inner.chars().count() + 1 {
                    chars.next();
                }
                check_placeholder(inner, &params, sig).map_err(err)?;
                has_placeholder = true;
            }
            c => plain.push(c),
        }
    }
    Ok(if has_placeholder {
        Tag::Format
    } else {
        Tag::Plain(plain)
    })
}

/// Checks one placeholder, given without its braces: `arg[:spec]`.
fn check_placeholder(inner: &str, params: &[String], sig: &Signature) -> Result<(), String> {
    let (arg, spec) = match inner.split_once(':') {
        Some((arg, spec)) => (arg, Some(spec)),
        None => (inner, None),
    };
    check_argument(
        arg,
        &format!("tag placeholder `{{{inner}}}`"),
        inner,
        params,
        sig,
    )?;
    if let Some(spec) = spec {
        if spec.contains(".*") {
            return Err(format!(
                "`.*` in tag placeholder `{{{inner}}}` takes a positional argument; \
                 tags may only name parameters: write `.precision$` with a parameter name"
            ));
        }
        // `name$` and `0$` refer to an argument for the width or the precision.
        for (i, _) in spec.match_indices('$') {
            let begin = spec[..i]
                .char_indices()
                .rev()
                .take_while(|&(_, c)| c == '_' || c.is_alphanumeric())
                .last()
                .map_or(i, |(j, _)| j);
            let name = &spec[begin..i];
            if name.is_empty() {
                continue; // `$` used as a fill character
            }
            let what = format!("`{name}$` in tag placeholder `{{{inner}}}`");
            check_argument(name, &what, inner, params, sig)?;
        }
    }
    Ok(())
}

/// Checks that `arg` (from placeholder `{inner}`, described by `what`) names a
/// parameter of the function.
fn check_argument(
    arg: &str,
    what: &str,
    inner: &str,
    params: &[String],
    sig: &Signature,
) -> Result<(), String> {
    let fn_name = &sig.ident;
    if arg.is_empty() || arg.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "{what} is positional; tags may only name parameters of `{fn_name}`, as in `{{{}}}`",
            params.iter().next().map_or("param", String::as_str),
        ));
    }
    let ident = arg.strip_prefix("r#").unwrap_or(arg);
    let mut chars = ident.chars();
    let is_ident = chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric());
    if !is_ident {
        return Err(format!(
            "invalid format string in tag: expected `{{name}}` or `{{name:spec}}` \
             with the name of a parameter, found `{{{inner}}}`"
        ));
    }
    if !params.iter().any(|p| p == ident) {
        let known = if params.is_empty() {
            format!("`{fn_name}` has no named parameters")
        } else {
            let list: Vec<String> = params.iter().map(|p| format!("`{p}`")).collect();
            format!("the parameters of `{fn_name}` are {}", list.join(", "))
        };
        return Err(format!("{what} names no parameter of `{fn_name}`; {known}"));
    }
    Ok(())
}

/// The names bound by the function's parameters, `self` included.
fn parameter_names(sig: &Signature) -> Vec<String> {
    let mut names = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(_) => {
                names.push("self".to_owned());
            }
            FnArg::Typed(pat) => collect_bindings(&pat.pat, &mut names),
        }
    }
    names
}

fn collect_bindings(pat: &Pat, names: &mut Vec<String>) {
    match pat {
        Pat::Ident(p) => {
            names.push(p.ident.unraw().to_string());
            if let Some((_, sub)) = &p.subpat {
                collect_bindings(sub, names);
            }
        }
        Pat::Or(p) => p.cases.iter().for_each(|c| collect_bindings(c, names)),
        Pat::Paren(p) => collect_bindings(&p.pat, names),
        Pat::Reference(p) => collect_bindings(&p.pat, names),
        Pat::Slice(p) => p.elems.iter().for_each(|c| collect_bindings(c, names)),
        Pat::Struct(p) => p
            .fields
            .iter()
            .for_each(|f| collect_bindings(&f.pat, names)),
        Pat::Tuple(p) => p.elems.iter().for_each(|c| collect_bindings(c, names)),
        Pat::TupleStruct(p) => p.elems.iter().for_each(|c| collect_bindings(c, names)),
        Pat::Type(p) => collect_bindings(&p.pat, names),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig() -> Signature {
        syn::parse_str("fn load(&self, user_id: u64, (a, b): (u8, u8), w: usize)").unwrap()
    }

    fn check_str(tag: &str) -> Result<Option<String>, String> {
        let lit = LitStr::new(tag, proc_macro2::Span::call_site());
        match check(&lit, &sig()) {
            Ok(Tag::Plain(text)) => Ok(Some(text)),
            Ok(Tag::Format) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn placeholders_naming_parameters_are_accepted() {
        for tag in [
            "{user_id}",
            "{self:?} {a}-{b:>w$} {user_id:.w$e}",
            "{{{user_id}}}",
            "{r#a}",
            "{a:$>5}",
        ] {
            assert_eq!(check_str(tag), Ok(None), "{tag}");
        }
    }

    #[test]
    fn a_tag_without_placeholders_is_unescaped() {
        assert_eq!(check_str("a {{b}} c"), Ok(Some("a {b} c".to_owned())));
    }

    #[test]
    fn mistakes_are_reported() {
        for (tag, message) in [
            ("{nope}", "names no parameter of `load`"),
            ("{}", "is positional"),
            ("{0:?}", "is positional"),
            ("{a:1$}", "`1$` in tag placeholder `{a:1$}` is positional"),
            ("{a:.*}", "takes a positional argument"),
            ("{a:width$}", "`width$` in tag placeholder"),
            ("{a", "is never closed"),
            ("a}", "unmatched `}`"),
            ("{a b}", "expected `{name}`"),
        ] {
            let err = check_str(tag).unwrap_err();
            assert!(err.contains(message), "{tag}: {err}");
        }
    }
}
