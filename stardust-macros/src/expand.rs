//! Code generation for `#[trace]`.
//!
//! Every path into the runtime goes through `<crate>::__private`, every path into
//! the standard library is fully qualified (`::core::...`, `::std::...`), and every
//! local the expansion introduces is spanned with [`Span::mixed_site`], so the
//! user's code can neither see those locals nor break the expansion by shadowing
//! `Result`, `Option`, `Box`, `Span` or `trace`.

use proc_macro2::{Delimiter, Group, Ident, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::visit_mut::VisitMut;
use syn::{
    AttrStyle, Attribute, Block, Expr, ExprAsync, ExprCall, GenericArgument, ImplItem, Item,
    ItemFn, LitStr, PathArguments, ReturnType, Signature, Stmt, Token, TraitItem, Type,
    TypeImplTrait, TypeParamBound, Visibility,
};

use crate::attr::TraceArgs;
use crate::tag::{self, Tag};

/// Expands `#[trace(args)] item`.
pub(crate) fn trace(args: TokenStream, item: TokenStream) -> TokenStream {
    let func = match parse_item(item.clone()) {
        Ok(func) => func,
        // Not a function we can instrument: report why and keep the item as it
        // was, so that the only error is ours (or, for a malformed item, rustc's).
        Err(Some(err)) => return with_error(err, item),
        Err(None) => return item,
    };
    let args = match syn::parse2::<TraceArgs>(args) {
        Ok(args) => args,
        Err(err) => return with_error(err, item),
    };
    match generate(&func, args) {
        Ok(tokens) => tokens,
        Err(err) => with_error(err, item),
    }
}

fn with_error(err: syn::Error, item: TokenStream) -> TokenStream {
    let mut tokens = err.to_compile_error();
    tokens.extend(item);
    tokens
}

/// A function item whose body may not have parsed.
struct MaybeItemFn {
    outer_attrs: Vec<Attribute>,
    inner_attrs: Vec<Attribute>,
    vis: Visibility,
    sig: Signature,
    body: Body,
}

enum Body {
    /// The body parsed: it can be inspected (for the `Box::pin(async move {..})` shape).
    Parsed(Block),
    /// The body did not parse: it is passed on verbatim so that rustc reports the
    /// user's own syntax error. Inner attributes stay inside it.
    Raw(Group),
}

impl ToTokens for Body {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        match self {
            Body::Parsed(block) => block.to_tokens(tokens),
            Body::Raw(group) => group.to_tokens(tokens),
        }
    }
}

impl Body {
    /// The body's contents, to splice into a block of the expansion: the statements
    /// of a parsed body (so its tail expression stays a tail expression), or the
    /// whole unparsed body as one block.
    fn contents(&self) -> TokenStream {
        match self {
            Body::Parsed(block) => {
                let stmts = &block.stmts;
                quote!(#(#stmts)*)
            }
            Body::Raw(group) => group.to_token_stream(),
        }
    }
}

/// The speculative fallback: a signature followed by any brace-delimited body, or by
/// `;` (a trait method without a default body).
struct RawItemFn {
    attrs: Vec<Attribute>,
    vis: Visibility,
    sig: Signature,
    body: Result<Group, Token![;]>,
}

impl Parse for RawItemFn {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis = input.parse()?;
        let sig = input.parse()?;
        let body = if input.peek(Token![;]) {
            Err(input.parse()?)
        } else {
            match input.parse::<TokenTree>()? {
                TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => Ok(g),
                other => return Err(syn::Error::new(other.span(), "expected a function body")),
            }
        };
        if !input.is_empty() {
            return Err(input.error("unexpected tokens after the function body"));
        }
        Ok(RawItemFn {
            attrs,
            vis,
            sig,
            body,
        })
    }
}

/// Parses the annotated item.
///
/// `Err(Some(_))` is an error to report; `Err(None)` means the item is malformed in
/// a way rustc will report itself once the item is emitted unchanged.
fn parse_item(item: TokenStream) -> Result<MaybeItemFn, Option<syn::Error>> {
    if let Ok(func) = syn::parse2::<ItemFn>(item.clone()) {
        let (inner_attrs, outer_attrs) = func
            .attrs
            .into_iter()
            .partition(|a| matches!(a.style, AttrStyle::Inner(_)));
        return Ok(MaybeItemFn {
            outer_attrs,
            inner_attrs,
            vis: func.vis,
            sig: func.sig,
            body: Body::Parsed(*func.block),
        });
    }
    if let Ok(raw) = syn::parse2::<RawItemFn>(item.clone()) {
        return match raw.body {
            Ok(body) => Ok(MaybeItemFn {
                outer_attrs: raw.attrs,
                inner_attrs: Vec::new(),
                vis: raw.vis,
                sig: raw.sig,
                body: Body::Raw(body),
            }),
            Err(semi) => Err(Some(syn::Error::new(
                semi.span,
                "`#[trace]` needs a function body to instrument; \
                 put it on the implementations of this method instead",
            ))),
        };
    }
    let parsed = syn::parse2::<Item>(item.clone());
    if let Ok(parsed) = &parsed {
        if !matches!(parsed, Item::Verbatim(_)) {
            return Err(Some(not_a_function(parsed)));
        }
    }
    // Items that only exist inside impls and traits (`default fn`, `type T;`, ...).
    let unsupported = if let Ok(ImplItem::Fn(f)) = syn::parse2::<ImplItem>(item.clone()) {
        f.defaultness
            .map(|d| (d.span, "`#[trace]` cannot be applied to a `default fn`"))
    } else if let Ok(trait_item) = syn::parse2::<TraitItem>(item) {
        match trait_item {
            TraitItem::Type(t) => Some((
                t.type_token.span,
                "`#[trace]` can only be applied to functions, not to an associated type",
            )),
            TraitItem::Const(c) => Some((
                c.const_token.span,
                "`#[trace]` can only be applied to functions, not to an associated constant",
            )),
            _ => None,
        }
    } else {
        None
    };
    match (unsupported, parsed) {
        (Some((span, msg)), _) => Err(Some(syn::Error::new(span, msg))),
        // An item syn keeps as tokens: no better span than the attribute's.
        (None, Ok(item)) => Err(Some(not_a_function(&item))),
        (None, Err(_)) => Err(None),
    }
}

/// The error for `#[trace]` on an item that is not a function, spanned on its keyword.
fn not_a_function(item: &Item) -> syn::Error {
    let (span, what) = match item {
        Item::Const(i) => (i.const_token.span, "a constant"),
        Item::Enum(i) => (i.enum_token.span, "an enum"),
        Item::ExternCrate(i) => (i.extern_token.span, "an `extern crate`"),
        Item::ForeignMod(i) => (i.abi.extern_token.span, "an `extern` block"),
        Item::Impl(i) => (i.impl_token.span, "an `impl` block"),
        Item::Macro(i) => (i.mac.path.segments[0].ident.span(), "a macro invocation"),
        Item::Mod(i) => (i.mod_token.span, "a module"),
        Item::Static(i) => (i.static_token.span, "a static"),
        Item::Struct(i) => (i.struct_token.span, "a struct"),
        Item::Trait(i) => (i.trait_token.span, "a trait"),
        Item::TraitAlias(i) => (i.trait_token.span, "a trait alias"),
        Item::Type(i) => (i.type_token.span, "a type alias"),
        Item::Union(i) => (i.union_token.span, "a union"),
        Item::Use(i) => (i.use_token.span, "a `use` item"),
        _ => (Span::call_site(), "this item"),
    };
    syn::Error::new(
        span,
        format!("`#[trace]` can only be applied to functions, not to {what}"),
    )
}

/// What the expansion needs to know about the function's return type.
struct Output<'a> {
    /// The type itself, when it can be named inside the body (no `impl Trait`).
    nameable: Option<&'a Type>,
    /// Its last path segment is `Result`: record `Err` values as span errors.
    is_result: bool,
}

impl<'a> Output<'a> {
    fn of(ty: Option<&'a Type>) -> Self {
        match ty {
            None => Output {
                nameable: None,
                is_result: false,
            },
            Some(ty) => Output {
                nameable: (!contains_impl_trait(ty)).then_some(ty),
                is_result: is_result(ty),
            },
        }
    }

    /// `-> R` for a closure, when `R` can be named.
    fn closure_return(&self) -> TokenStream {
        match self.nameable {
            Some(ty) => quote!(-> #ty),
            None => TokenStream::new(),
        }
    }

    /// A statement that fixes an async block's output type to `R`, so that `?` and
    /// `return` infer as they would in the function itself.
    fn pin_async_output(&self) -> TokenStream {
        let Some(ty) = self.nameable else {
            return TokenStream::new();
        };
        let fake = Ident::new("__stardust_fake", Span::mixed_site());
        quote! {
            #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::empty_loop)]
            if false {
                let #fake: #ty = loop {};
                return #fake;
            }
        }
    }
}

fn generate(func: &MaybeItemFn, args: TraceArgs) -> syn::Result<TokenStream> {
    let MaybeItemFn {
        outer_attrs,
        inner_attrs,
        vis,
        sig,
        body,
    } = func;

    if let Some(constness) = &sig.constness {
        return Err(syn::Error::new(
            constness.span,
            "`#[trace]` cannot be applied to a `const fn`: spans are opened at run time",
        ));
    }
    let tag = match &args.tag {
        Some(lit) => Some((lit, tag::check(lit, sig)?)),
        None => None,
    };

    let krate = match &args.krate {
        Some(path) => path.to_token_stream(),
        None => quote!(::stardust_runtime),
    };
    let private = quote!(#krate::__private);
    let callsite = Ident::new("__STARDUST_CALLSITE", Span::mixed_site());
    let name = match &args.name {
        Some(name) => name.to_token_stream(),
        None => {
            let fn_name = LitStr::new(&sig.ident.unraw().to_string(), sig.ident.span());
            quote!(::core::concat!(::core::module_path!(), "::", #fn_name))
        }
    };
    let tag_text = tag.map(|(lit, kind)| match kind {
        Tag::Format => quote!(::std::format!(#lit)),
        Tag::Plain(text) => {
            let text = LitStr::new(&text, lit.span());
            quote!(::std::string::String::from(#text))
        }
    });

    // The callsite is a `static` scoped to the block that takes its address, so
    // nothing in the user's body can collide with it.
    let callsite = quote! {
        {
            static #callsite: #private::Callsite = #private::Callsite::new(#name);
            &#callsite
        }
    };
    let ret_type = match &sig.output {
        ReturnType::Default => None,
        ReturnType::Type(_, ty) => Some(&**ty),
    };

    let new_body = if sig.asyncness.is_some() {
        let output = Output::of(ret_type);
        let contents = body.contents();
        let inner = instrumented_async(
            &private,
            &callsite,
            tag_text.as_ref(),
            &output,
            |pin| quote!(async move { #pin #contents }),
        );
        quote!(#inner.await)
    } else if let Some((stmts, call, fut)) = boxed_async_shape(body) {
        // The `async-trait` shape: instrument the boxed future, not its creation.
        let output = Output::of(future_output(ret_type));
        let inner = instrumented_async(&private, &callsite, tag_text.as_ref(), &output, |pin| {
            if pin.is_empty() {
                fut.to_token_stream()
            } else {
                let ExprAsync {
                    attrs,
                    async_token,
                    capture,
                    block,
                } = fut;
                let stmts = &block.stmts;
                quote!(#(#attrs)* #async_token #capture { #pin #(#stmts)* })
            }
        });
        let func = &call.func;
        let call_attrs = &call.attrs;
        let mut call_args = TokenStream::new();
        call.paren_token
            .surround(&mut call_args, |t| inner.to_tokens(t));
        quote! {
            #(#stmts)*
            #(#call_attrs)* #func #call_args
        }
    } else {
        let output = Output::of(ret_type);
        let guard = Ident::new("__stardust_guard", Span::mixed_site());
        let mutability = (tag_text.is_some() || output.is_result).then(<Token![mut]>::default);
        let tag_stmt = tag_text.map(|text| quote!(#guard.tag_with(|| #text);));
        let run = if output.is_result {
            let ret = Ident::new("__stardust_ret", Span::mixed_site());
            let closure_return = output.closure_return();
            let record = record_error(
                &private,
                &ret,
                |text, kind| quote!(#private::set_error_of(&mut #guard, #text, #kind);),
            );
            quote! {
                let #ret = #private::call_once(move || #closure_return #body);
                #record
                #ret
            }
        } else {
            body.contents()
        };
        quote! {
            let #mutability #guard = #private::enter(#callsite);
            #tag_stmt
            #run
        }
    };

    Ok(quote! {
        #(#outer_attrs)*
        #vis #sig {
            #(#inner_attrs)*
            #new_body
        }
    })
}

/// `<private>::instrument(callsite, async move { .. })`, where `user_future(pin)`
/// gives the user's future, with `pin` (see [`Output::pin_async_output`]) as the
/// first statement of its async block when non-empty.
fn instrumented_async(
    private: &TokenStream,
    callsite: &TokenStream,
    tag_text: Option<&TokenStream>,
    output: &Output<'_>,
    user_future: impl FnOnce(TokenStream) -> TokenStream,
) -> TokenStream {
    let tag_stmt = tag_text.map(|text| quote!(#private::tag_current(|| #text);));
    let user_future = user_future(output.pin_async_output());
    let future = if output.is_result {
        let ret = Ident::new("__stardust_ret", Span::mixed_site());
        let record = record_error(
            private,
            &ret,
            |text, kind| quote!(#private::set_current_error_of(#text, #kind);),
        );
        quote! {
            async move {
                #tag_stmt
                let #ret = #user_future.await;
                #record
                #ret
            }
        }
    } else if tag_stmt.is_some() {
        quote!(async move { #tag_stmt #user_future.await })
    } else {
        user_future
    };
    quote!(#private::instrument(#callsite, #future))
}

/// Records `ret`'s error, if it is a `Result::Err`, with `set(text, kind)` (`kind`: the error
/// type's short name, for `ex:<Type>`).
fn record_error(
    private: &TokenStream,
    ret: &Ident,
    set: impl FnOnce(TokenStream, TokenStream) -> TokenStream,
) -> TokenStream {
    let err = Ident::new("__stardust_err", Span::mixed_site());
    let set = set(
        quote!((&&&#private::ErrText(#err)).__stardust_error_text()),
        quote!(#private::error_kind(#err)),
    );
    quote! {
        {
            #[allow(unused_imports)]
            use #private::{
                ErrTextDebug as _, ErrTextDisplay as _, ErrTextTypeName as _, ProbeOther as _,
                ProbeResult as _,
            };
            if let ::core::option::Option::Some(#err) =
                (&#private::ResultProbe(&#ret)).__stardust_err()
            {
                #set
            }
        }
    }
}

/// Recognises a body whose final expression is `<path>::pin(async move { .. })`, as
/// `async-trait` generates. Returns the statements before it, the call and the block.
fn boxed_async_shape(body: &Body) -> Option<(&[Stmt], &ExprCall, &ExprAsync)> {
    let Body::Parsed(block) = body else {
        return None;
    };
    let (Stmt::Expr(Expr::Call(call), None), stmts) = block.stmts.split_last()? else {
        return None;
    };
    let Expr::Path(func) = &*call.func else {
        return None;
    };
    if func.path.segments.last()?.ident != "pin" || call.args.len() != 1 {
        return None;
    }
    match &call.args[0] {
        Expr::Async(fut) if fut.capture.is_some() => Some((stmts, call, fut)),
        _ => None,
    }
}

/// `R` in a return type such as `Pin<Box<dyn Future<Output = R> + Send + 'a>>`.
fn future_output(ty: Option<&Type>) -> Option<&Type> {
    fn in_path(path: &syn::Path) -> Option<&Type> {
        path.segments.iter().find_map(|seg| match &seg.arguments {
            PathArguments::AngleBracketed(args) => args.args.iter().find_map(|arg| match arg {
                GenericArgument::AssocType(assoc) if assoc.ident == "Output" => Some(&assoc.ty),
                GenericArgument::Type(ty) => in_type(ty),
                _ => None,
            }),
            _ => None,
        })
    }
    fn in_bounds<'a>(bounds: impl IntoIterator<Item = &'a TypeParamBound>) -> Option<&'a Type> {
        bounds.into_iter().find_map(|b| match b {
            TypeParamBound::Trait(t) => in_path(&t.path),
            _ => None,
        })
    }
    fn in_type(ty: &Type) -> Option<&Type> {
        match ty {
            Type::Path(p) => in_path(&p.path),
            Type::TraitObject(t) => in_bounds(&t.bounds),
            Type::ImplTrait(t) => in_bounds(&t.bounds),
            Type::Paren(t) => in_type(&t.elem),
            Type::Group(t) => in_type(&t.elem),
            _ => None,
        }
    }
    in_type(ty?)
}

/// Whether the last path segment of `ty` is `Result` (`Result<T, E>`,
/// `io::Result<T>`, `anyhow::Result<T>`, ...).
fn is_result(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p
            .path
            .segments
            .last()
            .is_some_and(|seg| seg.ident == "Result"),
        Type::Paren(t) => is_result(&t.elem),
        Type::Group(t) => is_result(&t.elem),
        _ => false,
    }
}

fn contains_impl_trait(ty: &Type) -> bool {
    struct Finder(bool);
    impl VisitMut for Finder {
        fn visit_type_impl_trait_mut(&mut self, _: &mut TypeImplTrait) {
            self.0 = true;
        }
    }
    let mut finder = Finder(false);
    finder.visit_type_mut(&mut ty.clone());
    finder.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(args: &str, item: &str) -> String {
        trace(args.parse().unwrap(), item.parse().unwrap()).to_string()
    }

    #[test]
    fn a_non_result_sync_body_is_left_in_place() {
        let out = expand("", "fn f(x: u32) -> u32 { if x > 1 { return 1; } x }");
        assert!(out.contains(":: __private :: enter ("), "{out}");
        assert!(!out.contains("call_once"), "{out}");
        assert!(out.ends_with("; if x > 1 { return 1 ; } x }"), "{out}");
    }

    #[test]
    fn result_bodies_run_in_call_once_after_the_tag() {
        let out = expand("tag = \"{x}\"", "fn f(x: u32) -> io::Result<u32> { Ok(x) }");
        let tag = out.find("tag_with").unwrap();
        let call = out
            .find("call_once (move || -> io :: Result < u32 > { Ok (x) })")
            .unwrap();
        assert!(tag < call, "{out}");
        assert!(out.contains("set_error"), "{out}");
    }

    #[test]
    fn impl_trait_outputs_are_not_named() {
        let out = expand("", "fn f() -> Result<impl Display, E> { Ok(1) }");
        assert!(out.contains("call_once (move || { Ok (1) })"), "{out}");
        let out = expand("", "async fn f() -> impl Display { 1 }");
        assert!(!out.contains("__stardust_fake"), "{out}");
    }

    #[test]
    fn the_boxed_future_of_the_async_trait_shape_is_instrumented() {
        let out = expand(
            "",
            "fn f(&self) -> Pin<Box<dyn Future<Output = Result<u8, E>> + Send + '_>> { \
             let a = 1; Box::pin(async move { Ok(a) }) }",
        );
        assert!(
            out.contains(
                "let a = 1 ; Box :: pin (:: stardust_runtime :: __private :: instrument ("
            ),
            "{out}"
        );
        assert!(
            out.contains("let __stardust_fake : Result < u8 , E >"),
            "{out}"
        );
        assert!(out.contains("set_current_error_of"), "{out}");
    }

    #[test]
    fn the_crate_path_is_used_for_every_runtime_item() {
        let out = expand("crate = my::rt", "async fn f() -> Result<(), E> { Ok(()) }");
        assert!(!out.contains("stardust_runtime"), "{out}");
        assert!(out.contains("my :: rt :: __private :: instrument"), "{out}");
    }

    #[test]
    fn an_unparsable_body_is_passed_on_whole() {
        let out = expand("", "fn f() -> u32 { let = ; }");
        assert!(out.ends_with("{ let = ; } }"), "{out}");
        assert!(!out.contains("compile_error"), "{out}");
    }
}
