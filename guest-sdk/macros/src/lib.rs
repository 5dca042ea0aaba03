//! The `#[rule]` attribute of `sluice-guest` (re-exported as `sluice_guest::rule`).
//!
//! It leaves the rule function untouched — so rule logic is unit-tested natively through
//! `sluice_guest::testing` — and adds, only on `wasm32`, the four exports ABI v1 requires
//! (`sluice_abi_version`, `sluice_alloc`, `sluice_on_message`; the memory comes from the
//! toolchain). Everything the macro can check about the function it checks here and reports as a
//! compile error with a span; what it cannot (that the argument really is `sluice_guest::Message`)
//! it leaves to the type checker through a coercion to `fn(&Message) -> Outcome`, on every target.
//!
//! Generated code names the SDK as `::sluice_guest`, so the dependency must not be renamed.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, GenericParam, Item, ItemFn, ReturnType, Type};

/// Exports `fn NAME(msg: &Message) -> Outcome` as the module's sluice rule (ABI v1).
///
/// Use it once per crate. Misuse is a compile error pointing at the offending tokens.
#[proc_macro_attribute]
pub fn rule(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = TokenStream2::from(item);
    match expand(attr.into(), item.clone()) {
        Ok(tokens) => tokens.into(),
        // Keep the item as written beside the error, so the error is the only one reported
        // (no follow-on "cannot find function" or unused-import noise).
        Err(e) => {
            let error = e.into_compile_error();
            quote! { #error #item }.into()
        }
    }
}

fn expand(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    if !attr.is_empty() {
        return Err(syn::Error::new_spanned(
            attr,
            "`#[rule]` takes no arguments; the rule's topic filter, actions and grant are set when it is created (`sluice rule create`)",
        ));
    }
    let item: Item = syn::parse2(item)?;
    let Item::Fn(func) = item else {
        return Err(syn::Error::new(
            item_span(&item),
            "`#[rule]` goes on a function `fn(msg: &Message) -> Outcome`",
        ));
    };
    check_signature(&func)?;
    Ok(generate(&func))
}

/// The span of what a misplaced attribute is on: its keyword and name, not its whole body.
fn item_span(item: &Item) -> Span {
    match item {
        Item::Struct(s) => s
            .struct_token
            .span
            .join(s.ident.span())
            .unwrap_or(s.ident.span()),
        Item::Enum(e) => e
            .enum_token
            .span
            .join(e.ident.span())
            .unwrap_or(e.ident.span()),
        Item::Const(c) => c.ident.span(),
        Item::Static(s) => s.ident.span(),
        Item::Mod(m) => m.ident.span(),
        Item::Trait(t) => t.ident.span(),
        Item::Type(t) => t.ident.span(),
        Item::Impl(i) => i.impl_token.span,
        other => other.span(),
    }
}

fn is_rule_attr(attr: &syn::Attribute) -> bool {
    let path = attr.path();
    path.segments.last().is_some_and(|s| s.ident == "rule")
        && (path.segments.len() == 1
            || (path.segments.len() == 2 && path.segments[0].ident == "sluice_guest"))
}

fn check_signature(func: &ItemFn) -> syn::Result<()> {
    let sig = &func.sig;
    if let Some(again) = func.attrs.iter().find(|a| is_rule_attr(a)) {
        return Err(syn::Error::new_spanned(
            again,
            "`#[rule]` is applied twice; a module exports exactly one rule",
        ));
    }
    if let Some(token) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            token,
            "a rule cannot be `async`: the host calls it synchronously, once per message, under a CPU deadline",
        ));
    }
    if let Some(token) = &sig.unsafety {
        return Err(syn::Error::new_spanned(
            token,
            "a rule cannot be `unsafe fn`: the host calls it with no preconditions to uphold",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new_spanned(
            abi,
            "a rule is a plain Rust function; `#[rule]` generates the `extern \"C\"` exports itself",
        ));
    }
    if let Some(param) = sig
        .generics
        .params
        .iter()
        .find(|p| !matches!(p, GenericParam::Lifetime(_)))
    {
        return Err(syn::Error::new_spanned(
            param,
            "a rule cannot be generic: the module exports one concrete function",
        ));
    }
    if let Some(clause) = &sig.generics.where_clause {
        return Err(syn::Error::new_spanned(
            clause,
            "a rule cannot have a `where` clause: the module exports one concrete function",
        ));
    }
    if let Some(dots) = &sig.variadic {
        return Err(syn::Error::new_spanned(dots, "a rule cannot be variadic"));
    }
    let mut inputs = sig.inputs.iter();
    let (Some(first), None) = (inputs.next(), inputs.next()) else {
        // Point at what is too many (the second argument), or at the empty parentheses.
        let span = match sig.inputs.iter().nth(1) {
            Some(extra) => extra.span(),
            None => sig.paren_token.span.join(),
        };
        return Err(syn::Error::new(
            span,
            "a rule takes exactly one argument, the message: `fn(msg: &Message) -> Outcome`",
        ));
    };
    match first {
        FnArg::Receiver(recv) => {
            return Err(syn::Error::new_spanned(
                recv,
                "a rule is a free function, not a method: `fn(msg: &Message) -> Outcome`",
            ))
        }
        FnArg::Typed(arg) => match &*arg.ty {
            Type::Reference(r) if r.mutability.is_none() => {}
            Type::Reference(r) => {
                return Err(syn::Error::new_spanned(
                    r.mutability,
                    "a rule borrows the message immutably: `msg: &Message`",
                ))
            }
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    "a rule borrows the message: `msg: &Message`",
                ))
            }
        },
    }
    if let ReturnType::Default = sig.output {
        return Err(syn::Error::new(
            sig.paren_token.span.close(),
            "a rule returns what it decided: add `-> Outcome`",
        ));
    }
    Ok(())
}

fn generate(func: &ItemFn) -> TokenStream2 {
    let name = &func.sig.ident;
    // The coercion proves the signature with the real types and reports a mismatch at it.
    let sig_span = func.sig.span();
    let check = quote_spanned! {sig_span=>
        #[doc(hidden)]
        #[allow(dead_code)]
        const _: fn(&::sluice_guest::Message<'_>) -> ::sluice_guest::Outcome = #name;
    };
    quote! {
        #func

        #check

        /// The ABI v1 exports of this module's rule (only on `wasm32`). Its fixed name makes a
        /// second `#[rule]` in the same module a compile error.
        #[doc(hidden)]
        #[allow(non_upper_case_globals, dead_code)]
        const __sluice_guest_one_rule_per_module: () = ();

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        mod __sluice_rule_exports {
            #[unsafe(no_mangle)]
            pub extern "C" fn sluice_abi_version() -> i32 {
                ::sluice_guest::abi::ABI_VERSION
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn sluice_alloc(size: i32) -> i32 {
                ::sluice_guest::__export::alloc(size)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn sluice_on_message(ptr: i32, len: i32) -> i32 {
                // SAFETY: the host passes the buffer it got from `sluice_alloc`, filled.
                unsafe { ::sluice_guest::__export::on_message(super::#name, ptr, len) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(item: &str) -> String {
        expand(TokenStream2::new(), item.parse().unwrap())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_well_formed_rule_expands_to_the_function_and_its_exports() {
        let out = expand(
            TokenStream2::new(),
            "fn r(msg: &Message) -> Outcome { Outcome::Ok }"
                .parse()
                .unwrap(),
        )
        .unwrap()
        .to_string();
        for needle in [
            "fn r",
            "sluice_abi_version",
            "sluice_alloc",
            "sluice_on_message",
            "target_arch = \"wasm32\"",
        ] {
            assert!(out.contains(needle), "{needle} missing from {out}");
        }
    }

    #[test]
    fn misuse_is_an_error_not_a_panic() {
        for (item, want) in [
            ("async fn r(m: &Message) -> Outcome { todo!() }", "async"),
            ("fn r<T>(m: &Message) -> Outcome { todo!() }", "generic"),
            ("fn r(m: &Message) { }", "-> Outcome"),
            ("fn r() -> Outcome { todo!() }", "exactly one argument"),
            (
                "fn r(a: &Message, b: u8) -> Outcome { todo!() }",
                "exactly one argument",
            ),
            ("fn r(m: Message) -> Outcome { todo!() }", "borrows"),
            ("fn r(m: &mut Message) -> Outcome { todo!() }", "immutably"),
            ("#[rule] fn r(m: &Message) -> Outcome { todo!() }", "twice"),
            (
                "#[sluice_guest::rule] fn r(m: &Message) -> Outcome { todo!() }",
                "twice",
            ),
            ("struct S;", "goes on a function"),
            ("unsafe fn r(m: &Message) -> Outcome { todo!() }", "unsafe"),
            (
                "extern \"C\" fn r(m: &Message) -> Outcome { todo!() }",
                "extern",
            ),
        ] {
            let e = err(item);
            assert!(e.contains(want), "{item}: {e}");
        }
        let e = expand(
            "x".parse().unwrap(),
            "fn r(m: &Message) -> Outcome { todo!() }".parse().unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no arguments"), "{e}");
    }
}
