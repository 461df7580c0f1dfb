//! `#[derive(Schema)]`: describes a struct or enum for vox's schema
//! evolution (ADR 0008). Reads the same shape serde's derive encodes, and
//! refuses the serde attributes that would make the description lie.

use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::{Attribute, Data, DeriveInput, Fields, LitStr};

/// What the serde and vox attributes of one item say.
#[derive(Default)]
struct Attrs {
    rename: Option<String>,
    default: bool,
    transparent: bool,
}

/// Reads `#[serde(..)]` and `#[vox(..)]`; `allow_default` for fields,
/// `allow_transparent` for containers.
fn attrs(list: &[Attribute], allow_default: bool, allow_transparent: bool) -> syn::Result<Attrs> {
    let mut out = Attrs::default();
    for attr in list {
        let is_serde = attr.path().is_ident("serde");
        if !is_serde && !attr.path().is_ident("vox") {
            continue;
        }
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("default") && allow_default {
                if meta.input.peek(syn::Token![=]) {
                    return Err(meta.error(
                        "`default = \"path\"` is not supported by the Schema derive; implement `Default` for the field type and write `#[serde(default)]`",
                    ));
                }
                out.default = true;
                Ok(())
            } else if meta.path.is_ident("rename") && is_serde {
                let v: LitStr = meta.value()?.parse()?;
                out.rename = Some(v.value());
                Ok(())
            } else if meta.path.is_ident("transparent") && is_serde && allow_transparent {
                out.transparent = true;
                Ok(())
            } else if meta.path.is_ident("deny_unknown_fields") && is_serde {
                Ok(())
            } else {
                let name = meta.path.get_ident().map(|i| i.to_string()).unwrap_or_default();
                Err(meta.error(format!(
                    "`{}({name})` is not supported by the Schema derive: it changes the encoding in a way the schema \
                     would not describe (supported: `rename`, `default`, `transparent`, `deny_unknown_fields`)",
                    if is_serde { "serde" } else { "vox" }
                )))
            }
        })?;
    }
    Ok(out)
}

/// The field list of a struct or variant, as `Field` expressions, and the
/// variant kind.
fn fields(fields: &Fields, vc: &TokenStream2) -> syn::Result<(Vec<TokenStream2>, TokenStream2)> {
    let kind = match fields {
        Fields::Named(_) => quote!(#vc::schema::VariantKind::Struct),
        Fields::Unnamed(u) if u.unnamed.len() == 1 => quote!(#vc::schema::VariantKind::Newtype),
        Fields::Unnamed(_) => quote!(#vc::schema::VariantKind::Tuple),
        Fields::Unit => quote!(#vc::schema::VariantKind::Unit),
    };
    let mut out = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let a = attrs(&f.attrs, true, false)?;
        let name = a.rename.unwrap_or_else(|| f.ident.as_ref().map(|i| i.to_string()).unwrap_or_else(|| i.to_string()));
        let ty = &f.ty;
        let default =
            if a.default { quote!(#vc::schema::default_bytes::<#ty>()) } else { quote!(::core::option::Option::None) };
        out.push(quote! {
            #vc::schema::Field { name: ::std::string::String::from(#name), ty: __b.of::<#ty>(), default: #default }
        });
    }
    Ok((out, kind))
}

pub(crate) fn derive(input: DeriveInput) -> syn::Result<TokenStream2> {
    let vc = quote!(::vox_core);
    let container = attrs(&input.attrs, false, true)?;
    let ident = &input.ident;
    let type_name = container.rename.clone().unwrap_or_else(|| ident.to_string());
    let mut generics = input.generics.clone();
    for p in generics.type_params_mut() {
        p.bounds.push(syn::parse_quote!(#vc::schema::Schema));
    }
    let (impl_g, ty_g, where_g) = generics.split_for_impl();
    let body = match &input.data {
        Data::Struct(s) => {
            let single = s.fields.len() == 1 && !matches!(s.fields, Fields::Named(_));
            if container.transparent || single {
                // serde writes a newtype struct (and a transparent one) as
                // its inner value.
                let Some(f) = s.fields.iter().next() else {
                    return Err(syn::Error::new_spanned(ident, "a transparent struct needs one field"));
                };
                let ty = &f.ty;
                quote!(__b.of::<#ty>())
            } else {
                let (fs, _) = fields(&s.fields, &vc)?;
                quote! {
                    __b.recursive::<Self>(|__b| #vc::schema::Node::Struct {
                        name: ::std::string::String::from(#type_name),
                        fields: ::std::vec![#(#fs),*],
                    })
                }
            }
        }
        Data::Enum(e) => {
            let mut vs = Vec::new();
            for v in &e.variants {
                let a = attrs(&v.attrs, false, false)?;
                let name = a.rename.unwrap_or_else(|| v.ident.to_string());
                let (fs, kind) = fields(&v.fields, &vc)?;
                vs.push(quote! {
                    #vc::schema::Variant {
                        name: ::std::string::String::from(#name),
                        kind: #kind,
                        fields: ::std::vec![#(#fs),*],
                    }
                });
            }
            quote! {
                __b.recursive::<Self>(|__b| #vc::schema::Node::Enum {
                    name: ::std::string::String::from(#type_name),
                    variants: ::std::vec![#(#vs),*],
                })
            }
        }
        Data::Union(u) => return Err(syn::Error::new_spanned(u.union_token, "unions have no schema")),
    };
    Ok(quote! {
        impl #impl_g #vc::schema::Schema for #ident #ty_g #where_g {
            fn describe(__b: &mut #vc::schema::SchemaBuilder) -> #vc::schema::TypeRef {
                #body
            }
        }
    })
}
