//! Procedural macros for vox.
//!
//! Use them through `vox_core::service` (the re-export documents the macro
//! with a complete example); this crate only holds the code generator.

mod schema;

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ItemTrait, Pat, PathArguments, ReturnType, TraitItem, TraitItemFn, Type,
    parse_macro_input,
};

/// Turns a trait of `async fn` methods into a vox service: the trait (with
/// `Send` futures), a `<Name>Client`, a `<Name>Dispatcher<S>` and the
/// method table. See `vox_core::service` for the full documentation.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = TokenStream2::from(attr);
    let item = parse_macro_input!(item as ItemTrait);
    // On error, the trait is still emitted (without the vox attributes) so
    // the only errors the user sees are the ones pointing at the signature.
    let mut fallback = item.clone();
    for ti in &mut fallback.items {
        if let TraitItem::Fn(f) = ti {
            f.attrs.retain(|a| !a.path().is_ident("vox"));
        }
    }
    match expand(attr, item) {
        Ok(tokens) => tokens.into(),
        Err(e) => {
            let e = e.to_compile_error();
            quote!(#e #fallback).into()
        }
    }
}

/// Derives `vox_core::schema::Schema` for a struct or enum: its fields and
/// variants by name, for schema evolution (ADR 0008). A field marked
/// `#[serde(default)]` or `#[vox(default)]` takes `Default::default()` when
/// a peer's version lacks it; an `Option` field takes `None`. See
/// `vox_core::schema`.
#[proc_macro_derive(Schema, attributes(vox))]
pub fn derive_schema(item: TokenStream) -> TokenStream {
    let input = parse_macro_input!(item as syn::DeriveInput);
    match schema::derive(input) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Whether `ty` is written `Vec<u8>` (or `std::vec::Vec<u8>`): such values
/// travel as one byte string (the same bytes on the wire as a sequence of
/// `u8`, but copied whole instead of one element at a time).
fn is_byte_vec(ty: &Type) -> bool {
    let Type::Path(p) = ty else { return false };
    let Some(last) = p.path.segments.last() else { return false };
    if last.ident != "Vec" {
        return false;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else { return false };
    matches!(args.args.first(), Some(GenericArgument::Type(Type::Path(t))) if args.args.len() == 1 && t.path.is_ident("u8"))
}

/// Whether `ty` is spelled `Bytes` or `bytes::Bytes` (taken to be
/// `bytes::Bytes`: it travels as a `vox_core::wire::Blob`, shared, never
/// copied).
fn is_bytes(ty: &Type) -> bool {
    let Type::Path(p) = ty else { return false };
    let segments: Vec<String> = p.path.segments.iter().map(|s| s.ident.to_string()).collect();
    p.qself.is_none()
        && p.path.segments.iter().all(|s| s.arguments.is_empty())
        && (segments == ["Bytes"] || segments == ["bytes", "Bytes"])
}

/// The type a value of `ty` is encoded as, and how to get there and back.
fn wire_ty(ty: &Type, vc: &TokenStream2) -> TokenStream2 {
    if is_byte_vec(ty) {
        quote!(#vc::service::__private::ByteBuf)
    } else if is_bytes(ty) {
        quote!(#vc::wire::Blob)
    } else {
        quote!(#ty)
    }
}

fn to_wire(ty: &Type, value: TokenStream2, vc: &TokenStream2) -> TokenStream2 {
    if is_byte_vec(ty) {
        quote!(#vc::service::__private::ByteBuf::from_vec(#value))
    } else if is_bytes(ty) {
        quote!(#vc::wire::Blob::from(#value))
    } else {
        value
    }
}

fn from_wire(ty: &Type, value: TokenStream2) -> TokenStream2 {
    if is_byte_vec(ty) {
        quote!(#value.into_vec())
    } else if is_bytes(ty) {
        quote!(#value.into_bytes())
    } else {
        value
    }
}

/// Collects several errors so one expansion reports all of them.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Which end of a channel an argument is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ChannelKind {
    Tx,
    Rx,
}

struct Arg {
    name: Ident,
    ty: Type,
    // Some((kind, item type)) for a top-level Tx<T> / Rx<T>.
    channel: Option<(ChannelKind, Type)>,
}

enum Output {
    Unit,
    Plain(Box<Type>),
    Fallible { ok: Box<Type>, err: Box<Type> },
}

struct Method {
    name: Ident,
    docs: Vec<Attribute>,
    args: Vec<Arg>,
    output: Output,
    idem: bool,
    persist: bool,
}

/// If `ty` is `Tx<T>` or `Rx<T>` (by last path segment), its kind and `T`.
fn channel_of(ty: &Type) -> Option<(ChannelKind, Type)> {
    let Type::Path(p) = ty else { return None };
    if p.qself.is_some() {
        return None;
    }
    let seg = p.path.segments.last()?;
    let kind = match seg.ident.to_string().as_str() {
        "Tx" => ChannelKind::Tx,
        "Rx" => ChannelKind::Rx,
        _ => return None,
    };
    let PathArguments::AngleBracketed(args) = &seg.arguments else { return None };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    let item = types.next()?;
    Some((kind, item))
}

/// Finds the first `Tx`/`Rx` anywhere inside `ty` (including `ty` itself).
fn find_channel(ty: &Type) -> Option<&Type> {
    if channel_of(ty).is_some() {
        return Some(ty);
    }
    find_channel_inside(ty)
}

/// Finds a `Tx`/`Rx` strictly inside `ty`.
fn find_channel_inside(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Path(p) => p.path.segments.iter().find_map(|seg| match &seg.arguments {
            PathArguments::AngleBracketed(a) => a.args.iter().find_map(|g| match g {
                GenericArgument::Type(t) => find_channel(t),
                _ => None,
            }),
            PathArguments::Parenthesized(a) => a.inputs.iter().find_map(find_channel).or(match &a.output {
                ReturnType::Type(_, t) => find_channel(t),
                ReturnType::Default => None,
            }),
            PathArguments::None => None,
        }),
        Type::Tuple(t) => t.elems.iter().find_map(find_channel),
        Type::Array(a) => find_channel(&a.elem),
        Type::Slice(s) => find_channel(&s.elem),
        Type::Reference(r) => find_channel(&r.elem),
        Type::Ptr(p) => find_channel(&p.elem),
        Type::Paren(p) => find_channel(&p.elem),
        Type::Group(g) => find_channel(&g.elem),
        _ => None,
    }
}

fn is_named(seg_ty: &Type, name: &str, arity: usize) -> Option<Vec<Type>> {
    let Type::Path(p) = seg_ty else { return None };
    let seg = p.path.segments.last()?;
    if seg.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &seg.arguments else { return None };
    let types: Vec<Type> = args
        .args
        .iter()
        .filter_map(|a| match a {
            GenericArgument::Type(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    (types.len() == arity).then_some(types)
}

/// Reads `#[vox(idem)]`, `#[vox(persist)]` and `#[vox(idem, persist)]`.
fn policy(attrs: &[Attribute], errors: &mut Errors) -> (bool, bool) {
    let (mut idem, mut persist) = (false, false);
    for attr in attrs.iter().filter(|a| a.path().is_ident("vox")) {
        let r = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("idem") {
                idem = true;
                Ok(())
            } else if meta.path.is_ident("persist") {
                persist = true;
                Ok(())
            } else {
                Err(meta.error("unknown vox method attribute; expected `idem` or `persist`"))
            }
        });
        if let Err(e) = r {
            errors.push(e);
        }
    }
    (idem, persist)
}

fn parse_method(f: &TraitItemFn, errors: &mut Errors) -> Option<Method> {
    let sig = &f.sig;
    let before = errors.0.is_some();
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new_spanned(
            sig,
            format!("vox service methods must be `async fn`: write `async fn {}(&self, ..)`", sig.ident),
        ));
    }
    if let Some(b) = &f.default {
        errors.push(syn::Error::new_spanned(b, "vox service methods cannot have a default body"));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(&sig.generics, "vox service methods cannot be generic"));
    }
    if sig.constness.is_some() || sig.unsafety.is_some() || sig.abi.is_some() || sig.variadic.is_some() {
        errors.push(syn::Error::new_spanned(sig, "vox service methods must be plain `async fn`"));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() && r.colon_token.is_none() => {}
        Some(other @ FnArg::Receiver(_)) => errors.push(syn::Error::new_spanned(
            other,
            "vox service methods must take `&self` (not `self`, `&mut self` or a typed receiver)",
        )),
        Some(other) => errors.push(syn::Error::new_spanned(
            other,
            format!("vox service methods must take `&self` first: write `async fn {}(&self, ..)`", sig.ident),
        )),
        None => errors.push(syn::Error::new(
            sig.ident.span(),
            format!("vox service methods must take `&self`: write `async fn {}(&self, ..)`", sig.ident),
        )),
    }
    let mut args = Vec::new();
    for input in inputs {
        let FnArg::Typed(pt) = input else {
            errors.push(syn::Error::new_spanned(input, "unexpected receiver"));
            continue;
        };
        let name = match &*pt.pat {
            Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => pi.ident.clone(),
            other => {
                errors.push(syn::Error::new_spanned(other, "vox service arguments must be plain names"));
                continue;
            }
        };
        let ty = (*pt.ty).clone();
        if let Some(inner) = find_channel_inside(&ty) {
            errors.push(syn::Error::new_spanned(
                inner,
                "channels (`Tx`/`Rx`) are only allowed as top-level arguments, never inside collections, \
                 `Option`s, tuples or other types (PROTOCOL.md rule rpc.channel)",
            ));
            continue;
        }
        if matches!(ty, Type::Reference(_) | Type::ImplTrait(_) | Type::Infer(_)) {
            errors.push(syn::Error::new_spanned(
                ty,
                "vox service arguments must be owned types (they are decoded from the request)",
            ));
            continue;
        }
        let channel = channel_of(&ty);
        args.push(Arg { name, ty, channel });
    }
    let output = match &sig.output {
        ReturnType::Default => Output::Unit,
        ReturnType::Type(_, ty) => {
            if let Some(ch) = find_channel(ty) {
                errors.push(syn::Error::new_spanned(
                    ch,
                    "channels (`Tx`/`Rx`) are not allowed in return types or errors; \
                     pass a `Tx<T>` argument to stream results back (PROTOCOL.md rule rpc.channel)",
                ));
            }
            match is_named(ty, "Result", 2) {
                Some(mut ts) => {
                    let err = ts.pop().expect("two types");
                    let ok = ts.pop().expect("two types");
                    Output::Fallible { ok: Box::new(ok), err: Box::new(err) }
                }
                None => Output::Plain(ty.clone()),
            }
        }
    };
    let (idem, persist) = policy(&f.attrs, errors);
    let docs = f.attrs.iter().filter(|a| a.path().is_ident("doc")).cloned().collect();
    if errors.0.is_some() && !before {
        return None;
    }
    Some(Method { name: sig.ident.clone(), docs, args, output, idem, persist })
}

fn expand(attr: TokenStream2, mut item: ItemTrait) -> syn::Result<TokenStream2> {
    let mut errors = Errors::default();
    if !attr.is_empty() {
        errors.push(syn::Error::new_spanned(attr, "#[service] takes no arguments"));
    }
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(&item.generics, "vox service traits cannot be generic"));
    }
    let mut methods = Vec::new();
    for ti in &item.items {
        match ti {
            TraitItem::Fn(f) => {
                if let Some(m) = parse_method(f, &mut errors) {
                    methods.push(m);
                }
            }
            other => {
                errors.push(syn::Error::new_spanned(other, "vox service traits may only contain `async fn` methods"))
            }
        }
    }
    errors.finish()?;

    let trait_name = &item.ident;
    let vis = &item.vis;
    let service_name = trait_name.to_string();
    let client = format_ident!("{}Client", trait_name);
    let dispatcher = format_ident!("{}Dispatcher", trait_name);
    let ids = format_ident!("__VOX_{}_METHOD_IDS", trait_name.to_string().to_uppercase());
    let n = methods.len();
    let vc = quote!(::vox_core);

    // The trait, rewritten so every future is Send.
    for ti in &mut item.items {
        if let TraitItem::Fn(f) = ti {
            f.attrs.retain(|a| !a.path().is_ident("vox"));
            f.sig.asyncness = None;
            let out = match &f.sig.output {
                ReturnType::Default => quote!(()),
                ReturnType::Type(_, t) => quote!(#t),
            };
            let span = f.sig.ident.span();
            f.sig.output = syn::parse2(quote_spanned! {span=>
                -> impl ::core::future::Future<Output = #out> + ::core::marker::Send
            })?;
        }
    }
    item.supertraits.push(syn::parse2(quote!(::core::marker::Send))?);
    item.supertraits.push(syn::parse2(quote!(::core::marker::Sync))?);
    item.supertraits.push(syn::parse2(quote!('static))?);
    if item.colon_token.is_none() {
        item.colon_token = Some(Default::default());
    }

    let infos = methods.iter().map(|m| {
        let name = m.name.to_string();
        let (idem, persist) = (m.idem, m.persist);
        let has_channels = m.args.iter().any(|a| a.channel.is_some());
        quote! {
            #vc::service::MethodInfo {
                service: #service_name,
                name: #name,
                idem: #idem,
                persist: #persist,
                has_channels: #has_channels,
            }
        }
    });

    // rule: schema.identity — one MethodSchema per method: the plain
    // arguments as a struct of named fields, the return value, the error,
    // and each channel's item type.
    let schemas = methods.iter().map(|m| {
        let method_name = m.name.to_string();
        let args = m.args.iter().filter(|a| a.channel.is_none()).map(|a| {
            let (n, t) = (a.name.to_string(), &a.ty);
            // Spanned at the type: a type without `Schema` is reported there.
            quote_spanned!(t.span()=> (#n, __b.of::<#t>()))
        });
        let chans = m.args.iter().filter_map(|a| a.channel.as_ref().map(|c| (a, c))).map(|(a, (kind, item))| {
            let n = a.name.to_string();
            let dir = match kind {
                ChannelKind::Rx => quote!(#vc::wire::ChannelDirection::CallerToHandler),
                ChannelKind::Tx => quote!(#vc::wire::ChannelDirection::HandlerToCaller),
            };
            quote_spanned!(item.span()=> (#n, #dir, __b.of::<#item>()))
        });
        let (ret, err) = match &m.output {
            Output::Unit => (quote!(__b.of::<()>()), quote!(::core::option::Option::None)),
            Output::Plain(t) => (quote_spanned!(t.span()=> __b.of::<#t>()), quote!(::core::option::Option::None)),
            Output::Fallible { ok, err } => (
                quote_spanned!(ok.span()=> __b.of::<#ok>()),
                quote_spanned!(err.span()=> ::core::option::Option::Some(__b.of::<#err>())),
            ),
        };
        quote! {
            {
                let mut __b = #vc::schema::SchemaBuilder::new();
                let __args = ::std::vec![#(#args),*];
                let __ret = #ret;
                let __err = #err;
                let __channels = ::std::vec![#(#chans),*];
                #vc::schema::MethodSchema::new(#method_name, __b, __args, __ret, __err, __channels)
            }
        }
    });

    let client_methods = methods.iter().enumerate().map(|(i, m)| {
        let name = &m.name;
        let docs = &m.docs;
        let params = m.args.iter().map(|a| {
            let (n, t) = (&a.name, &a.ty);
            quote!(#n: #t)
        });
        let plain_wire: Vec<TokenStream2> =
            m.args
            .iter()
            .filter(|a| a.channel.is_none())
            .map(|a| {
                let n = &a.name;
                to_wire(&a.ty, quote!(#n), &vc)
            })
            .collect();
        let plain_tys: Vec<TokenStream2> =
            m.args.iter().filter(|a| a.channel.is_none()).map(|a| wire_ty(&a.ty, &vc)).collect();
        let chans = m.args.iter().filter(|a| a.channel.is_some()).map(|a| {
            let n = &a.name;
            let label = n.to_string();
            quote!(#vc::service::__private::channel_arg(#n, #label)?)
        });
        let (ret, body) = match &m.output {
            Output::Unit => (
                quote!(::core::result::Result<(), #vc::driver::CallError>),
                quote!(#vc::service::__private::call_evolving::<_, ()>(&self.caller, &__METHODS[#i], __id, &__SCHEMAS[#i], &__args, __channels).await),
            ),
            Output::Plain(t) => {
                let w = wire_ty(t, &vc);
                let back = from_wire(t, quote!(__r));
                (
                    quote!(::core::result::Result<#t, #vc::driver::CallError>),
                    quote!(#vc::service::__private::call_evolving::<_, #w>(&self.caller, &__METHODS[#i], __id, &__SCHEMAS[#i], &__args, __channels).await.map(|__r| #back)),
                )
            }
            Output::Fallible { ok, err } => {
                let w = wire_ty(ok, &vc);
                let back = from_wire(ok, quote!(__r));
                (
                    quote!(::core::result::Result<#ok, #vc::service::ServiceError<#err>>),
                    quote!(#vc::service::__private::typed(#vc::service::__private::call_evolving::<_, #w>(&self.caller, &__METHODS[#i], __id, &__SCHEMAS[#i], &__args, __channels).await).map(|__r| #back)),
                )
            }
        };
        // A channel end that cannot be handed over fails the call before
        // anything is sent (`?` converts into `ServiceError` as well).
        let channels_expr = quote! {
            let __channels: ::std::vec::Vec<#vc::driver::ChannelArg> = ::std::vec![#(#chans),*];
        };
        quote! {
            #(#docs)*
            pub async fn #name(&self, #(#params),*) -> #ret {
                let __id = #ids[#i];
                #channels_expr
                let __args: (#(#plain_tys,)*) = (#(#plain_wire,)*);
                #body
            }
        }
    });

    let arms = methods.iter().enumerate().map(|(i, m)| {
        let name = &m.name;
        let plain: Vec<&Ident> = m.args.iter().filter(|a| a.channel.is_none()).map(|a| &a.name).collect();
        let plain_tys: Vec<TokenStream2> =
            m.args.iter().filter(|a| a.channel.is_none()).map(|a| wire_ty(&a.ty, &vc)).collect();
        let unwrap_bytes = m.args.iter().filter(|a| a.channel.is_none()).filter_map(|a| {
            let n = &a.name;
            (is_byte_vec(&a.ty) || is_bytes(&a.ty)).then(|| {
                let back = from_wire(&a.ty, quote!(#n));
                quote!(let #n = #back;)
            })
        });
        let binds = m.args.iter().filter_map(|a| a.channel.as_ref().map(|c| (a, c))).enumerate().map(
            |(idx, (a, (kind, item)))| {
                let n = &a.name;
                let bind = match kind {
                    ChannelKind::Rx => quote!(__call.channels.rx::<#item>(#idx)),
                    ChannelKind::Tx => quote!(__call.channels.tx::<#item>(#idx)),
                };
                quote! {
                    let #n = match #bind {
                        ::core::result::Result::Ok(c) => c,
                        ::core::result::Result::Err(e) => return __call.reply.invalid_payload(e),
                    };
                }
            },
        );
        let all: Vec<&Ident> = m.args.iter().map(|a| &a.name).collect();
        let reply = match &m.output {
            Output::Unit => quote!(__call.reply.ok(&__ret)),
            Output::Plain(t) => {
                let w = to_wire(t, quote!(__ret), &vc);
                quote!(__call.reply.ok(&#w))
            }
            Output::Fallible { ok, .. } => {
                let w = to_wire(ok, quote!(v), &vc);
                quote! {
                    match __ret {
                        ::core::result::Result::Ok(v) => __call.reply.ok(&#w),
                        ::core::result::Result::Err(e) => __call.reply.user_error(&e),
                    }
                }
            }
        };
        quote! {
            if __call.method_id == #ids[#i] {
                let (#(#plain,)*) = match #vc::service::__private::decode_args::<(#(#plain_tys,)*)>(&__call) {
                    ::core::result::Result::Ok(a) => a,
                    ::core::result::Result::Err(e) => {
                        return #vc::service::__private::args_failed(__call.reply, &__METHODS[#i], e);
                    }
                };
                #(#unwrap_bytes)*
                #(#binds)*
                let __ret = #trait_name::#name(&*__service, #(#all),*).await;
                return #reply;
            }
        }
    });

    let names = methods.iter().map(|m| m.name.to_string());
    let client_doc = format!(
        "Typed client of the [`{trait_name}`] service: one async method per service method, \
         built from a connection's [`Caller`]({vc}::session::Caller).\n\nCalls that return \
         `Result<T, E>` report [`ServiceError<E>`]({vc}::service::ServiceError); the others report \
         [`CallError`]({vc}::driver::CallError).",
        vc = "vox_core"
    );
    let dispatcher_doc = format!(
        "Serves the [`{trait_name}`] service: a [`Handler`](vox_core::driver::Handler) that decodes \
         each call, binds its channels and calls the implementation `S`."
    );

    Ok(quote! {
        #item

        #[doc = #client_doc]
        #[derive(Clone, Debug)]
        #vis struct #client {
            caller: #vc::session::Caller,
        }

        #[doc = #dispatcher_doc]
        #vis struct #dispatcher<S> {
            service: ::std::sync::Arc<S>,
        }

        const _: () = {
            static #ids: ::std::sync::LazyLock<[#vc::wire::MethodId; #n]> = ::std::sync::LazyLock::new(|| {
                [#(#vc::wire::MethodId::from_names(#service_name, #names)),*]
            });
            const __METHODS: &[#vc::service::MethodInfo] = &[#(#infos),*];
            static __SCHEMAS: ::std::sync::LazyLock<[#vc::schema::MethodSchema; #n]> =
                ::std::sync::LazyLock::new(|| [#(#schemas),*]);

            impl #client {
                /// The service name (hashed into every method id, and used to open
                /// virtual connections by name).
                pub const SERVICE_NAME: &'static str = #service_name;
                /// One entry per method, in declaration order: name, method id and
                /// retry policy (`#[vox(idem)]`, `#[vox(persist)]`).
                pub const METHODS: &'static [#vc::service::MethodInfo] = __METHODS;

                /// The schema of each method, in declaration order (rule
                /// `schema.identity`).
                pub fn schemas() -> &'static [#vc::schema::MethodSchema] {
                    &*__SCHEMAS
                }

                /// A client calling over `caller`'s connection.
                pub fn new(caller: #vc::session::Caller) -> Self {
                    #client { caller }
                }

                /// The connection's caller.
                pub fn caller(&self) -> &#vc::session::Caller {
                    &self.caller
                }

                /// Connects to `addr` over TCP with default settings and
                /// returns a client of the root connection; the session
                /// lives as long as the client (and its clones).
                ///
                /// # Errors
                /// Why the session could not be established.
                pub async fn connect(addr: impl ::std::string::ToString) -> ::core::result::Result<Self, #vc::session::SessionError> {
                    #vc::service::__private::connect(#vc::session::SessionBuilder::new(), addr).await
                }

                /// Like `connect`, with the session settings of `builder`.
                ///
                /// # Errors
                /// Why the session could not be established.
                pub async fn connect_with(builder: #vc::session::SessionBuilder, addr: impl ::std::string::ToString) -> ::core::result::Result<Self, #vc::session::SessionError> {
                    #vc::service::__private::connect(builder, addr).await
                }

                #(#client_methods)*
            }

            impl #vc::service::Client for #client {
                const SERVICE_NAME: &'static str = #service_name;
                const METHODS: &'static [#vc::service::MethodInfo] = __METHODS;
                fn schemas() -> &'static [#vc::schema::MethodSchema] {
                    &*__SCHEMAS
                }
                fn from_caller(caller: #vc::session::Caller) -> Self {
                    #client { caller }
                }
                fn caller(&self) -> &#vc::session::Caller {
                    &self.caller
                }
            }

            impl<S> #dispatcher<S> {
                /// The service name.
                pub const SERVICE_NAME: &'static str = #service_name;
                /// One entry per method, in declaration order.
                pub const METHODS: &'static [#vc::service::MethodInfo] = __METHODS;

                /// The schema of each method, in declaration order.
                pub fn schemas() -> &'static [#vc::schema::MethodSchema] {
                    &*__SCHEMAS
                }

                /// Serves `service`.
                pub fn new(service: S) -> Self {
                    #dispatcher { service: ::std::sync::Arc::new(service) }
                }

                /// Serves a shared `service`.
                pub fn from_arc(service: ::std::sync::Arc<S>) -> Self {
                    #dispatcher { service }
                }

                /// The implementation.
                pub fn service(&self) -> &::std::sync::Arc<S> {
                    &self.service
                }
            }

            impl<S> ::core::clone::Clone for #dispatcher<S> {
                fn clone(&self) -> Self {
                    #dispatcher { service: self.service.clone() }
                }
            }

            impl<S> ::core::fmt::Debug for #dispatcher<S> {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.debug_struct(::core::stringify!(#dispatcher)).finish_non_exhaustive()
                }
            }

            impl<S: #trait_name> #vc::driver::Handler for #dispatcher<S> {
                fn handle(&self, call: #vc::driver::Call) -> #vc::driver::BoxFuture {
                    #[allow(unused_variables)]
                    let __service = self.service.clone();
                    ::std::boxed::Box::pin(async move {
                        #[allow(unused_mut)]
                        let mut __call = call;
                        // rule: schema.identity — answer the caller's
                        // schema query for one of our methods.
                        if __call.method_id == #vc::schema::schema_method_id() {
                            return #vc::service::__private::answer_schema(__call, &#ids[..], __METHODS, &*__SCHEMAS);
                        }
                        #(#arms)*
                        __call.reply.unknown_method()
                    })
                }

                fn policy(&self, method: #vc::wire::MethodId) -> #vc::driver::MethodPolicy {
                    // The ids are computed once (`#ids`); asked per request.
                    #ids.iter()
                        .position(|id| *id == method)
                        .map(|i| #vc::driver::MethodPolicy { idem: __METHODS[i].idem, persist: __METHODS[i].persist })
                        .unwrap_or_default()
                }
            }

            impl<S: #trait_name> #vc::service::ServiceDispatcher for #dispatcher<S> {
                const SERVICE_NAME: &'static str = #service_name;
                const METHODS: &'static [#vc::service::MethodInfo] = __METHODS;
                fn schemas() -> &'static [#vc::schema::MethodSchema] {
                    &*__SCHEMAS
                }
            }
        };
    })
}
