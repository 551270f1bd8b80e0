//! `#[derive(HasRcuHead)]` for [krcu](https://docs.rs/krcu): this crate
//! owns the one proc macro that finds a struct's embedded `RcuHead` and
//! writes `unsafe impl krcu::rcu::HasRcuHead` for it, so that no user
//! types a byte offset by hand.
//!
//! Use it through krcu (`use krcu::rcu::HasRcuHead;` brings the trait and
//! the derive), not directly: the generated code names `::krcu`. The
//! runnable examples and the tests of what the derive refuses live in
//! krcu's documentation of the trait, where they can use krcu.

use proc_macro::TokenStream;
use proc_macro2::{TokenStream as TokenStream2, TokenTree};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Field, Fields, Ident, Index, Member, Type};

/// Derives `krcu::rcu::HasRcuHead`: `RCU_HEAD_OFFSET` becomes
/// `core::mem::offset_of!` of the struct's `RcuHead` field, and the
/// default `rcu_callback` (drop the object) is kept.
///
/// ```rust,ignore
/// use krcu::rcu::{HasRcuHead, RcuHead};
///
/// #[derive(HasRcuHead)]
/// struct Node {
///     value: u64,
///     rcu: RcuHead,
/// }
///
/// krcu::kfree_rcu(Box::new(Node { value: 1, rcu: RcuHead::new() })).unwrap();
/// ```
///
/// (This example runs as a doctest of krcu, on the trait `HasRcuHead`.)
///
/// # Which field
/// The one field whose type is spelled with a last path segment
/// `RcuHead` (`RcuHead`, `rcu::RcuHead`, `krcu::rcu::RcuHead`), in a
/// struct with named or tuple fields. Mark a field `#[rcu_head]` to choose
/// it when the type is spelled through an alias or when there are several
/// heads; a marked field wins, and only one field may be marked. Whichever
/// field is chosen, the generated code checks at compile time that its
/// type is exactly `krcu::rcu::RcuHead`.
///
/// # What it refuses
/// With an error at the offending span: a struct with no `RcuHead` field,
/// with two or more and none marked, with two marked fields, a marked
/// field of another type, an enum, a union, and a `#[repr(packed)]`
/// struct (its head could be unaligned, and `call_rcu` writes the head's
/// words as aligned words).
///
/// # Bounds
/// The impl carries the struct's own generics and where clauses plus
/// `Self: Send + 'static`, the trait's supertraits, so a generic struct is
/// `HasRcuHead` exactly for the parameters that make it `Send + 'static`.
#[proc_macro_derive(HasRcuHead, attributes(rcu_head))]
pub fn derive_has_rcu_head(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as DeriveInput);
    expand_has_rcu_head(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// The name of the helper attribute that picks the head field.
const RCU_HEAD_ATTRIBUTE: &str = "rcu_head";

/// The impl for `input`, or the error that explains why there is none.
fn expand_has_rcu_head(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let name = &input.ident;
    let fields = match &input.data {
        Data::Struct(data) => &data.fields,
        Data::Enum(data) => {
            return Err(syn::Error::new_spanned(
                data.enum_token,
                format!(
                    "HasRcuHead can only be derived for a struct; `{name}` is an enum, \
                     whose variants could not all hold the RcuHead at one offset"
                ),
            ));
        }
        Data::Union(data) => {
            return Err(syn::Error::new_spanned(
                data.union_token,
                format!(
                    "HasRcuHead can only be derived for a struct; `{name}` is a union, \
                     whose other fields overlap the RcuHead"
                ),
            ));
        }
    };
    if let Some(attr) = input.attrs.iter().find(|a| is_rcu_head_attribute(a)) {
        return Err(syn::Error::new_spanned(
            attr,
            "#[rcu_head] goes on the RcuHead field, not on the struct",
        ));
    }
    if let Some(packed) = input.attrs.iter().find(|a| is_repr_packed(a)) {
        return Err(syn::Error::new_spanned(
            packed,
            format!(
                "HasRcuHead: `{name}` is #[repr(packed)], so its RcuHead may be unaligned, \
                 and call_rcu writes the head's pointers as aligned words; remove `packed`"
            ),
        ));
    }

    let member = head_member(name, fields)?;
    let mut generics = input.generics.clone();
    generics
        .make_where_clause()
        .predicates
        .push(syn::parse_quote!(Self: ::core::marker::Send + 'static));
    let (impl_generics, type_generics, where_clause) = generics.split_for_impl();

    // The type check carries the field's span, so that a `#[rcu_head]`
    // field of another type is reported there. It compares raw pointer
    // types, which no coercion converts between: a field that merely
    // dereferences to an RcuHead (a Box, a ManuallyDrop) is refused too.
    let head_pointer = quote_spanned! {member.span()=>
        &raw const this.#member
    };

    // SAFETY (of the generated `unsafe impl`): HasRcuHead's contract is
    // that RCU_HEAD_OFFSET is the byte offset of a field of type RcuHead
    // in Self. The offset is computed by `offset_of!` on the chosen field,
    // so it is that field's offset whatever the layout; the closure only
    // type-checks if the field's type is exactly `::krcu::rcu::RcuHead`;
    // and a packed struct, where that field could be unaligned, was
    // refused above. The supertraits Send + 'static are required by the
    // where clause, not assumed.
    Ok(quote! {
        #[automatically_derived]
        unsafe impl #impl_generics ::krcu::rcu::HasRcuHead for #name #type_generics
        #where_clause
        {
            const RCU_HEAD_OFFSET: usize = {
                let _: fn(&Self) -> *const ::krcu::rcu::RcuHead = |this| #head_pointer;
                ::core::mem::offset_of!(Self, #member)
            };
        }
    })
}

/// The field to use: the one marked `#[rcu_head]`, else the one field of
/// type `RcuHead`.
fn head_member(name: &Ident, fields: &Fields) -> syn::Result<Member> {
    let mut marked: Option<(Member, &Attribute)> = None;
    for (index, field) in fields.iter().enumerate() {
        let Some(attr) = field.attrs.iter().find(|a| is_rcu_head_attribute(a)) else {
            continue;
        };
        attr.meta.require_path_only()?;
        let member = field_member(index, field);
        if let Some((first, _)) = &marked {
            return Err(syn::Error::new_spanned(
                attr,
                format!(
                    "HasRcuHead: only one field of `{name}` may be marked #[rcu_head], \
                     and both `{}` and `{}` are",
                    member_name(first),
                    member_name(&member)
                ),
            ));
        }
        marked = Some((member, attr));
    }
    if let Some((member, _)) = marked {
        return Ok(member);
    }

    let heads: Vec<(Member, &Field)> = fields
        .iter()
        .enumerate()
        .filter(|(_, field)| names_rcu_head(&field.ty))
        .map(|(index, field)| (field_member(index, field), field))
        .collect();
    match heads.as_slice() {
        [] => Err(syn::Error::new_spanned(
            name,
            format!(
                "HasRcuHead: `{name}` has no field of type `RcuHead`; \
                 add one (e.g. `rcu: krcu::rcu::RcuHead`)"
            ),
        )),
        [(member, _)] => Ok(member.clone()),
        [_, (_, second), ..] => {
            let names: Vec<String> = heads
                .iter()
                .map(|(member, _)| format!("`{}`", member_name(member)))
                .collect();
            Err(syn::Error::new_spanned(
                second,
                format!(
                    "HasRcuHead: `{name}` has {} fields of type `RcuHead` ({}); \
                     mark the one to use with #[rcu_head]",
                    heads.len(),
                    names.join(", ")
                ),
            ))
        }
    }
}

/// How the generated code names field `index`: its identifier, or its
/// position in a tuple struct (spanned at the field, for errors).
fn field_member(index: usize, field: &Field) -> Member {
    match &field.ident {
        Some(ident) => Member::Named(ident.clone()),
        None => Member::Unnamed(Index {
            index: index as u32,
            span: field.span(),
        }),
    }
}

/// A field's name as the user wrote it: `rcu`, or `0` in a tuple struct.
fn member_name(member: &Member) -> String {
    match member {
        Member::Named(ident) => ident.to_string(),
        Member::Unnamed(index) => index.index.to_string(),
    }
}

/// Whether `ty` is spelled as a path ending in `RcuHead` (`RcuHead`,
/// `rcu::RcuHead`, `::krcu::rcu::RcuHead`). Only the spelling is looked
/// at; the generated code checks the type itself.
fn names_rcu_head(ty: &Type) -> bool {
    match ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .is_some_and(|segment| segment.ident == "RcuHead" && segment.arguments.is_empty()),
        // Types passed through a `macro_rules!` fragment arrive grouped.
        Type::Group(group) => names_rcu_head(&group.elem),
        Type::Paren(paren) => names_rcu_head(&paren.elem),
        _ => false,
    }
}

fn is_rcu_head_attribute(attr: &Attribute) -> bool {
    attr.path().is_ident(RCU_HEAD_ATTRIBUTE)
}

/// Whether `attr` is a `#[repr(...)]` that lists `packed` or `packed(N)`.
fn is_repr_packed(attr: &Attribute) -> bool {
    if !attr.path().is_ident("repr") {
        return false;
    }
    let Ok(list) = attr.meta.require_list() else {
        return false;
    };
    list.tokens
        .clone()
        .into_iter()
        .any(|token| matches!(&token, TokenTree::Ident(ident) if ident == "packed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(input: DeriveInput) -> Result<String, String> {
        expand_has_rcu_head(&input)
            .map(|tokens| tokens.to_string())
            .map_err(|error| error.to_string())
    }

    #[test]
    fn a_named_head_is_found_through_any_path() {
        for input in [
            syn::parse_quote!(
                struct Node {
                    value: u64,
                    rcu: RcuHead,
                }
            ),
            syn::parse_quote!(
                struct Node {
                    value: u64,
                    rcu: rcu::RcuHead,
                }
            ),
            syn::parse_quote!(
                struct Node {
                    value: u64,
                    rcu: ::krcu::rcu::RcuHead,
                }
            ),
        ] {
            let tokens = expand(input).unwrap();
            assert!(tokens.contains("offset_of ! (Self , rcu)"), "{tokens}");
            assert!(tokens.contains("& raw const this . rcu"), "{tokens}");
        }
    }

    #[test]
    fn a_tuple_head_is_named_by_position() {
        let tokens = expand(syn::parse_quote!(
            struct Node(u64, RcuHead, u8);
        ))
        .unwrap();
        assert!(tokens.contains("offset_of ! (Self , 1)"), "{tokens}");
    }

    #[test]
    fn the_marked_field_wins_over_the_spelling() {
        let tokens = expand(syn::parse_quote!(
            struct Node {
                a: RcuHead,
                #[rcu_head]
                b: Head,
                c: RcuHead,
            }
        ))
        .unwrap();
        assert!(tokens.contains("offset_of ! (Self , b)"), "{tokens}");
    }

    #[test]
    fn generics_and_where_clauses_are_kept_and_send_static_added() {
        let tokens = expand(syn::parse_quote!(
            struct Node<T: Clone>
            where
                T: Default,
            {
                value: T,
                rcu: RcuHead,
            }
        ))
        .unwrap();
        assert!(
            tokens.contains("impl < T : Clone > :: krcu :: rcu :: HasRcuHead for Node < T >"),
            "{tokens}"
        );
        assert!(
            tokens.contains("where T : Default , Self : :: core :: marker :: Send + 'static"),
            "{tokens}"
        );
    }

    #[test]
    fn refusals_say_why() {
        let cases: [(DeriveInput, &str); 8] = [
            (
                syn::parse_quote!(
                    struct Node {
                        value: u64,
                    }
                ),
                "HasRcuHead: `Node` has no field of type `RcuHead`; add one (e.g. `rcu: krcu::rcu::RcuHead`)",
            ),
            (
                syn::parse_quote!(
                    struct Node;
                ),
                "has no field of type `RcuHead`",
            ),
            (
                syn::parse_quote!(
                    struct Node {
                        a: RcuHead,
                        b: u8,
                        c: rcu::RcuHead,
                    }
                ),
                "HasRcuHead: `Node` has 2 fields of type `RcuHead` (`a`, `c`); mark the one to use with #[rcu_head]",
            ),
            (
                syn::parse_quote!(
                    struct Node {
                        #[rcu_head]
                        a: RcuHead,
                        #[rcu_head]
                        b: RcuHead,
                    }
                ),
                "only one field of `Node` may be marked #[rcu_head], and both `a` and `b` are",
            ),
            (
                syn::parse_quote!(
                    enum Node {
                        A(RcuHead),
                    }
                ),
                "`Node` is an enum",
            ),
            (
                syn::parse_quote!(union Node { a: u64 }),
                "`Node` is a union",
            ),
            (
                syn::parse_quote!(
                    #[repr(C, packed(2))]
                    struct Node {
                        rcu: RcuHead,
                    }
                ),
                "`Node` is #[repr(packed)]",
            ),
            (
                syn::parse_quote!(
                    #[rcu_head]
                    struct Node {
                        rcu: RcuHead,
                    }
                ),
                "#[rcu_head] goes on the RcuHead field",
            ),
        ];
        for (input, expected) in cases {
            let error = expand(input).unwrap_err();
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
    }

    #[test]
    fn a_repr_without_packed_is_accepted() {
        expand(syn::parse_quote!(
            #[repr(C, align(64))]
            struct Node {
                rcu: RcuHead,
            }
        ))
        .unwrap();
    }
}
