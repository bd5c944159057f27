//! Attribute macros of the pidbus SDK; use them through the `pidbus`
//! crate (`pidbus::interface`), which documents them with examples.
//!
//! `#[interface(name = "org.example.Greeter")]` on an `impl` block makes
//! each `async fn` taking `&self` a method of a D-Bus interface and adds
//! `fn into_interface(self) -> pidbus::Result<pidbus::Interface>`, which
//! builds the same [`Interface`] the builder makes — so properties and
//! signals are added to it with the builder, and it is served with
//! `Connection::serve_interface`. For each method:
//!
//! - its D-Bus name is the Rust name in PascalCase (`greet_all` →
//!   `GreetAll`), or `#[dbus(name = "…")]`;
//! - its arguments are the D-Bus arguments, named as in Rust in
//!   introspection, except those the call gives, which are not D-Bus
//!   arguments: `&Caller` (the verified caller), `&ObjectHandle` (the
//!   object called: set its properties, emit its signals) and
//!   `&Connection` (the connection the call came in on);
//! - it returns the reply value, or a `Result` whose error converts into
//!   `pidbus::MethodError` (so `?` works on the SDK's errors);
//! - `#[dbus(out_args("greeting"))]` names the reply's arguments;
//!   `#[dbus(deprecated)]` and `#[dbus(annotate("name", "value"))]` (on a
//!   method, property or signal) annotate it in introspection;
//! - `#[property]` / `#[property(readwrite)]` on `fn name() -> T { first
//!   value }` declares a property, `#[signal]` on `async fn name(object:
//!   &ObjectHandle, args…) -> pidbus::Result<()> {}` a signal, whose body
//!   becomes its emission;
//! - `#[setter(name)]` on an `async fn` taking the new value (and what
//!   the call gives) and returning the value to store decides each `Set`
//!   of read-write property `name` (see `Interface::on_set`);
//! - `#[authorize("org.example.action")]` asks the bus, before the body
//!   runs, whether the caller of *this call* may perform the action: a
//!   caller it does not allow gets `AccessDenied` naming the deciding rule.
//!
//! `#[proxy(interface = "org.example.Greeter")]` on a trait of `async fn`s
//! (`&self`, arguments, `-> pidbus::Result<T>`) makes `GreeterProxy`, a
//! typed client whose methods call the interface's (names as above); with
//! `default_service` and `default_path`, `GreeterProxy::connect(&bus)`.
//! A `#[property] async fn greetings(&self) -> pidbus::Result<u32>` reads
//! a property, a `#[signal] async fn greeted(&self) ->
//! pidbus::Result<pidbus::TypedSignals<(String,)>>` subscribes to a signal.
//!
//! [`Interface`]: https://docs.rs/pidbus/latest/pidbus/struct.Interface.html

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{FnArg, ImplItem, ImplItemFn, ItemImpl, LitStr, Pat, ReturnType, Type};

/// Declares a D-Bus interface on an `impl` block; see the `pidbus` crate's
/// documentation of `interface`.
#[proc_macro_attribute]
pub fn interface(attribute: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attribute.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// Declares a typed client of a D-Bus interface on a trait; see the
/// `pidbus` crate's documentation of `proxy`.
#[proc_macro_attribute]
pub fn proxy(attribute: TokenStream, item: TokenStream) -> TokenStream {
    match expand_proxy(attribute.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// What a proxy trait's function stands for.
enum ProxyMember {
    /// A method call.
    Method,
    /// `#[property]`: reading the property (`-> pidbus::Result<T>`).
    Property,
    /// `#[signal]`: the signal's stream (`-> pidbus::Result<pidbus::TypedSignals<(A…)>>`).
    Signal,
}

/// The `proxy` attribute's settings.
struct ProxySettings {
    interface: LitStr,
    default_service: Option<LitStr>,
    default_path: Option<LitStr>,
}

fn proxy_settings(attribute: Tokens) -> syn::Result<ProxySettings> {
    let span = attribute.span();
    let (mut interface, mut default_service, mut default_path) = (None, None, None);
    let parser = syn::meta::parser(|meta| {
        let slot = if meta.path.is_ident("interface") {
            &mut interface
        } else if meta.path.is_ident("default_service") {
            &mut default_service
        } else if meta.path.is_ident("default_path") {
            &mut default_path
        } else {
            return Err(meta.error("expected interface, default_service or default_path"));
        };
        *slot = Some(meta.value()?.parse::<LitStr>()?);
        Ok(())
    });
    syn::parse::Parser::parse2(parser, attribute)?;
    let interface = interface
        .ok_or_else(|| syn::Error::new(span, "expected `interface = \"org.example.Interface\"`"))?;
    check_interface_name(&interface)?;
    Ok(ProxySettings {
        interface,
        default_service,
        default_path,
    })
}

fn expand_proxy(attribute: Tokens, item: Tokens) -> syn::Result<Tokens> {
    let settings = proxy_settings(attribute)?;
    let declared: syn::ItemTrait = syn::parse2(item)?;
    let visibility = &declared.vis;
    let name = format_ident!("{}Proxy", declared.ident);
    let interface = &settings.interface;
    let mut methods = Vec::new();
    for item in &declared.items {
        let syn::TraitItem::Fn(function) = item else {
            continue;
        };
        let mut dbus = pascal_case(&function.sig.ident.to_string());
        let mut docs = Vec::new();
        let mut kind = ProxyMember::Method;
        for attribute in &function.attrs {
            if attribute.path().is_ident("property") {
                kind = ProxyMember::Property;
            } else if attribute.path().is_ident("signal") {
                kind = ProxyMember::Signal;
            } else if attribute.path().is_ident("dbus") {
                attribute.parse_nested_meta(|meta| {
                    if meta.path.is_ident("name") {
                        dbus = meta.value()?.parse::<LitStr>()?.value();
                        Ok(())
                    } else {
                        Err(meta.error("expected `name = \"Member\"`"))
                    }
                })?;
            } else if attribute.path().is_ident("doc") {
                docs.push(attribute.clone());
            }
        }
        check_member(&dbus, function.sig.ident.span())?;
        if function.sig.asyncness.is_none() {
            return Err(syn::Error::new(
                function.sig.span(),
                "a proxy method is an `async fn` returning `pidbus::Result<T>`",
            ));
        }
        let rust = &function.sig.ident;
        let output = &function.sig.output;
        let mut names = Vec::new();
        let mut inputs = Vec::new();
        for input in function.sig.inputs.iter().skip(1) {
            let FnArg::Typed(typed) = input else {
                continue;
            };
            let Pat::Ident(ident) = &*typed.pat else {
                return Err(syn::Error::new(
                    typed.pat.span(),
                    "proxy arguments need plain names",
                ));
            };
            names.push(ident.ident.clone());
            inputs.push(typed.clone());
        }
        let body = match kind {
            ProxyMember::Method => quote!(self.proxy.call(#dbus, &(#(#names,)*)).await),
            ProxyMember::Property if names.is_empty() => quote!(self.proxy.get(#dbus).await),
            ProxyMember::Signal if names.is_empty() => quote!(self.proxy.signals(#dbus).await),
            _ => {
                return Err(syn::Error::new(
                    function.sig.span(),
                    "a proxy #[property] or #[signal] takes only &self",
                ));
            }
        };
        methods.push(quote! {
            #(#docs)*
            pub async fn #rust(&self, #(#inputs),*) #output {
                #body
            }
        });
    }
    let connect = match (&settings.default_service, &settings.default_path) {
        (Some(service), Some(path)) => Some(quote! {
            /// A proxy of the interface at its default service and path.
            pub fn connect(bus: &::pidbus::Connection) -> ::pidbus::Result<Self> {
                Self::new(bus, #service, #path)
            }
        }),
        _ => None,
    };
    let doc = format!(
        "A typed client of the D-Bus interface `{}`, made by `#[pidbus::proxy]` from the trait `{}`.",
        interface.value(),
        declared.ident
    );
    Ok(quote! {
        #[doc = #doc]
        #[derive(Debug)]
        #visibility struct #name {
            proxy: ::pidbus::Proxy,
        }

        impl #name {
            /// A proxy of the interface on `destination`'s object at `path`.
            pub fn new(bus: &::pidbus::Connection, destination: &str, path: &str) -> ::pidbus::Result<Self> {
                ::std::result::Result::Ok(Self {
                    proxy: ::pidbus::Proxy::new(bus, destination, path, #interface)?,
                })
            }

            #connect

            /// The untyped proxy underneath: properties, signals,
            /// introspection.
            pub fn proxy(&self) -> &::pidbus::Proxy {
                &self.proxy
            }

            #(#methods)*
        }
    })
}

/// `name = "org.example.Iface"`.
fn interface_name(attribute: Tokens) -> syn::Result<LitStr> {
    let span = attribute.span();
    let mut name = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            name = Some(meta.value()?.parse::<LitStr>()?);
            Ok(())
        } else {
            Err(meta.error("expected `name = \"org.example.Interface\"`"))
        }
    });
    syn::parse::Parser::parse2(parser, attribute)?;
    let name =
        name.ok_or_else(|| syn::Error::new(span, "expected `name = \"org.example.Interface\"`"))?;
    check_interface_name(&name)?;
    Ok(name)
}

/// `[A-Za-z_][A-Za-z0-9_]*`: a member name, or one element of an
/// interface name. (The macros check at compile time what
/// `pidbus_protocol::names` checks at run time, without depending on it.)
fn is_name_element(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The D-Bus interface name rules, at compile time.
fn check_interface_name(name: &LitStr) -> syn::Result<()> {
    let text = name.value();
    let elements: Vec<&str> = text.split('.').collect();
    if elements.len() < 2 || !elements.iter().all(|e| is_name_element(e)) || text.len() > 255 {
        return Err(syn::Error::new(
            name.span(),
            format!(
                "{text:?} is not a D-Bus interface name: two or more elements of [A-Za-z_][A-Za-z0-9_]* separated by '.'"
            ),
        ));
    }
    Ok(())
}

fn expand(attribute: Tokens, item: Tokens) -> syn::Result<Tokens> {
    let name = interface_name(attribute)?;
    let mut block: ItemImpl = syn::parse2(item)?;
    let self_type = block.self_ty.clone();
    let mut declarations = Vec::new();
    // After every property, whatever the order of the block.
    let mut setters = Vec::new();
    for item in &mut block.items {
        let ImplItem::Fn(function) = item else {
            continue;
        };
        if let Some(attribute) = take_attribute(function, "setter") {
            let property: syn::Ident = attribute.parse_args()?;
            setters.push(Method::of(function)?.setter(&property)?);
        } else if take_attribute(function, "signal").is_some() {
            declarations.push(signal(function)?);
        } else if let Some(attribute) = take_attribute(function, "property") {
            declarations.push(property(function, &attribute)?);
        } else if function.sig.asyncness.is_some()
            && matches!(function.sig.inputs.first(), Some(FnArg::Receiver(_)))
        {
            declarations.push(Method::of(function)?.declaration());
        }
    }
    Ok(quote! {
        #block

        impl #self_type {
            /// The D-Bus interface the `#[interface]` block declares,
            /// served by this value; add properties and signals with the
            /// builder, serve it with `Connection::serve_interface`.
            pub fn into_interface(self) -> ::pidbus::Result<::pidbus::Interface> {
                let this = ::std::sync::Arc::new(self);
                let interface = ::pidbus::Interface::new(#name)?;
                #( let interface = #declarations; )*
                #( let interface = #setters; )*
                ::std::result::Result::Ok(interface)
            }
        }
    })
}

/// What the call gives a method besides its D-Bus arguments.
#[derive(Clone, Copy)]
enum Given {
    /// `&Caller`: the verified caller.
    Caller,
    /// `&ObjectHandle`: the object called (properties, signals).
    Object,
    /// `&Connection`: the connection the call came in on.
    Connection,
}

/// `deprecated` or `annotate("name", "value")` inside `#[dbus(...)]`.
fn annotation(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<Option<(LitStr, LitStr)>> {
    if meta.path.is_ident("deprecated") {
        let span = meta.path.span();
        return Ok(Some((
            LitStr::new("org.freedesktop.DBus.Deprecated", span),
            LitStr::new("true", span),
        )));
    }
    if meta.path.is_ident("annotate") {
        let content;
        syn::parenthesized!(content in meta.input);
        let name = content.parse::<LitStr>()?;
        content.parse::<syn::Token![,]>()?;
        let value = content.parse::<LitStr>()?;
        return Ok(Some((name, value)));
    }
    Ok(None)
}

/// The annotations a signal's or property's `#[dbus(...)]` gives,
/// removing the attribute.
fn member_annotations(function: &mut ImplItemFn) -> syn::Result<Vec<(LitStr, LitStr)>> {
    let mut annotations = Vec::new();
    while let Some(attribute) = take_attribute(function, "dbus") {
        attribute.parse_nested_meta(|meta| match annotation(&meta)? {
            Some(found) => {
                annotations.push(found);
                Ok(())
            }
            None => Err(meta.error("expected `deprecated` or `annotate(\"name\", \"value\")`")),
        })?;
    }
    Ok(annotations)
}

/// `.annotate(member, …)` calls for `annotations`.
fn annotate_calls(member: &str, annotations: &[(LitStr, LitStr)]) -> Tokens {
    let names = annotations.iter().map(|(n, _)| n);
    let values = annotations.iter().map(|(_, v)| v);
    quote!(#(.annotate(#member, #names, #values))*)
}

/// Removes `#[name]`/`#[name(...)]` from `function`, returning it.
fn take_attribute(function: &mut ImplItemFn, name: &str) -> Option<syn::Attribute> {
    let at = function
        .attrs
        .iter()
        .position(|a| a.path().is_ident(name))?;
    Some(function.attrs.remove(at))
}

/// `#[signal] async fn greeted(object: &ObjectHandle, name: String) ->
/// pidbus::Result<()> {}`: declares signal `Greeted(s)` and makes the
/// function emit it from `object`.
fn signal(function: &mut ImplItemFn) -> syn::Result<Tokens> {
    let wrong = || {
        syn::Error::new(
            function.sig.span(),
            "a #[signal] is `async fn name(object: &ObjectHandle, args…) -> pidbus::Result<()> {}`",
        )
    };
    if function.sig.asyncness.is_none() {
        return Err(wrong());
    }
    let mut inputs = function.sig.inputs.iter();
    let object = match inputs.next() {
        Some(FnArg::Typed(typed)) if matches!(given_by_call(&typed.ty), Some(Given::Object)) => {
            match &*typed.pat {
                Pat::Ident(ident) => ident.ident.clone(),
                _ => return Err(wrong()),
            }
        }
        _ => return Err(wrong()),
    };
    let mut names = Vec::new();
    let mut types = Vec::new();
    for input in inputs {
        let FnArg::Typed(typed) = input else {
            return Err(wrong());
        };
        let Pat::Ident(ident) = &*typed.pat else {
            return Err(wrong());
        };
        names.push(ident.ident.clone());
        types.push((*typed.ty).clone());
    }
    let dbus = pascal_case(&function.sig.ident.to_string());
    check_member(&dbus, function.sig.ident.span())?;
    let annotate = annotate_calls(&dbus, &member_annotations(function)?);
    function.block = syn::parse_quote!({
        #object.emit(#dbus, &(#(#names,)*)).await
    });
    Ok(quote!(interface.signal::<(#(#types,)*)>(#dbus) #annotate))
}

/// `#[property]` (read-only) or `#[property(readwrite)]` on `fn motd() ->
/// String { … }`: declares property `Motd` whose first value the function
/// returns.
fn property(function: &mut ImplItemFn, attribute: &syn::Attribute) -> syn::Result<Tokens> {
    let mut access = quote!(::pidbus::Access::Read);
    if !matches!(attribute.meta, syn::Meta::Path(_)) {
        attribute.parse_nested_meta(|meta| {
            if meta.path.is_ident("readwrite") {
                access = quote!(::pidbus::Access::ReadWrite);
                Ok(())
            } else {
                Err(meta.error("expected `#[property]` or `#[property(readwrite)]`"))
            }
        })?;
    }
    if !function.sig.inputs.is_empty() || function.sig.asyncness.is_some() {
        return Err(syn::Error::new(
            function.sig.span(),
            "a #[property] is `fn name() -> T { first value }`: set it later through the ObjectHandle",
        ));
    }
    let rust = function.sig.ident.clone();
    let dbus = pascal_case(&rust.to_string());
    check_member(&dbus, rust.span())?;
    let annotate = annotate_calls(&dbus, &member_annotations(function)?);
    Ok(quote!(interface.property(#dbus, #access, Self::#rust()) #annotate))
}

/// One `async fn` of the block, as a D-Bus method.
struct Method {
    rust: syn::Ident,
    dbus: String,
    /// The D-Bus arguments: names and types.
    arguments: Vec<(syn::Ident, Type)>,
    /// Where the `&Caller`, `&ObjectHandle` and `&Connection` arguments
    /// go, in order of position.
    given: Vec<(usize, Given)>,
    returns_result: bool,
    authorize: Option<LitStr>,
    /// The reply's argument names (`#[dbus(out_args("a", "b"))]`).
    out_args: Vec<LitStr>,
    /// Introspection annotations (`#[dbus(deprecated)]`,
    /// `#[dbus(annotate("name", "value"))]`).
    annotations: Vec<(LitStr, LitStr)>,
}

impl Method {
    fn of(function: &mut ImplItemFn) -> syn::Result<Self> {
        let rust = function.sig.ident.clone();
        let mut dbus = pascal_case(&rust.to_string());
        let mut authorize = None;
        let mut out_args = Vec::new();
        let mut annotations = Vec::new();
        let mut kept = Vec::new();
        for attribute in function.attrs.drain(..) {
            if attribute.path().is_ident("authorize") {
                authorize = Some(attribute.parse_args::<LitStr>()?);
            } else if attribute.path().is_ident("dbus") {
                attribute.parse_nested_meta(|meta| {
                    if meta.path.is_ident("name") {
                        dbus = meta.value()?.parse::<LitStr>()?.value();
                        Ok(())
                    } else if let Some(annotation) = annotation(&meta)? {
                        annotations.push(annotation);
                        Ok(())
                    } else if meta.path.is_ident("out_args") {
                        let content;
                        syn::parenthesized!(content in meta.input);
                        let names = content
                            .parse_terminated(|input| input.parse::<LitStr>(), syn::Token![,])?;
                        out_args = names.into_iter().collect();
                        Ok(())
                    } else {
                        Err(meta.error("expected `name = \"Member\"` or `out_args(\"name\", …)`"))
                    }
                })?;
            } else {
                kept.push(attribute);
            }
        }
        function.attrs = kept;
        check_member(&dbus, function.sig.ident.span())?;
        let mut arguments = Vec::new();
        let mut given = Vec::new();
        for (index, input) in function.sig.inputs.iter().skip(1).enumerate() {
            let FnArg::Typed(typed) = input else {
                continue;
            };
            if let Some(what) = given_by_call(&typed.ty) {
                given.push((index, what));
                continue;
            }
            let Pat::Ident(ident) = &*typed.pat else {
                return Err(syn::Error::new(
                    typed.pat.span(),
                    "a D-Bus method's arguments need plain names (they name its arguments in introspection)",
                ));
            };
            let ty = (*typed.ty).clone();
            if matches!(ty, Type::Reference(_)) {
                return Err(syn::Error::new(
                    ty.span(),
                    "D-Bus arguments are owned values (String, not &str); only `&Caller` is borrowed",
                ));
            }
            arguments.push((ident.ident.clone(), ty));
        }
        let returns_result = match &function.sig.output {
            ReturnType::Type(_, ty) => is_result(ty),
            ReturnType::Default => false,
        };
        Ok(Method {
            rust,
            dbus,
            arguments,
            given,
            returns_result,
            authorize,
            out_args,
            annotations,
        })
    }

    /// `interface.method(…)` and `.arg_names(…)` for this method.
    fn declaration(&self) -> Tokens {
        let Method {
            dbus,
            arguments,
            out_args,
            annotations,
            ..
        } = self;
        let annotation_names = annotations.iter().map(|(n, _)| n);
        let annotation_values = annotations.iter().map(|(_, v)| v);
        let names: Vec<&syn::Ident> = arguments.iter().map(|(n, _)| n).collect();
        let types: Vec<&Type> = arguments.iter().map(|(_, t)| t).collect();
        let name_texts: Vec<String> = names
            .iter()
            .map(|n| n.to_string().trim_start_matches("r#").to_owned())
            .collect();
        let (fetch, body) = self.invocation();
        let authorize = self.authorize.as_ref().map(|action| {
            quote! {
                let answer = call.authorize(#action).await?;
                if !answer.allowed {
                    return ::std::result::Result::Err(::pidbus::MethodError::access_denied(
                        ::std::format!("{} is not allowed to this caller ({})", #action, answer.rule),
                    ));
                }
            }
        });
        let handler_this = format_ident!("this");
        quote! {
            {
                let #handler_this = ::std::sync::Arc::clone(&this);
                interface
                    .method(#dbus, move |call: ::pidbus::CallContext, (#(#names,)*): (#(#types,)*)| {
                        let this = ::std::sync::Arc::clone(&#handler_this);
                        async move {
                            #authorize
                            #(#fetch)*
                            #body
                        }
                    })
                    .arg_names(#dbus, &[#(#name_texts),*], &[#(#out_args),*])
                    #(.annotate(#dbus, #annotation_names, #annotation_values))*
            }
        }
    }

    /// What the handler runs before the body (fetching what the call
    /// gives), and the call of the Rust function as a `Result<_,
    /// MethodError>`.
    fn invocation(&self) -> (Vec<Tokens>, Tokens) {
        let rust = &self.rust;
        let mut call_args: Vec<Tokens> = self.arguments.iter().map(|(n, _)| quote!(#n)).collect();
        let mut fetch = Vec::new();
        for (at, what) in &self.given {
            let value = match what {
                Given::Caller => quote!(call.caller()),
                Given::Object => {
                    fetch.push(quote! {
                        let object = call.object().ok_or_else(|| {
                            ::pidbus::MethodError::new(
                                ::pidbus::ErrorCode::Failed,
                                "this method's object is only known when served with serve_interface",
                            )
                        })?;
                    });
                    quote!(object)
                }
                Given::Connection => {
                    fetch.push(quote!(let connection = call.connection()?;));
                    quote!(&connection)
                }
            };
            call_args.insert(*at, value);
        }
        let body = if self.returns_result {
            quote!(this.#rust(#(#call_args),*).await.map_err(::std::convert::Into::<::pidbus::MethodError>::into))
        } else {
            quote!(::std::result::Result::Ok::<_, ::pidbus::MethodError>(this.#rust(#(#call_args),*).await))
        };
        (fetch, body)
    }

    /// `#[setter(property)]`: `.on_set(Property, …)` calling this function
    /// with the new value (its one argument besides what the call gives).
    fn setter(&self, property: &syn::Ident) -> syn::Result<Tokens> {
        let [(value, ty)] = self.arguments.as_slice() else {
            return Err(syn::Error::new(
                self.rust.span(),
                "a #[setter] takes the new value (and &Caller, &ObjectHandle or &Connection) and returns the value to store",
            ));
        };
        let dbus = pascal_case(&property.to_string());
        let (fetch, body) = self.invocation();
        Ok(quote! {
            {
                let setter_this = ::std::sync::Arc::clone(&this);
                interface.on_set(#dbus, move |call: ::pidbus::CallContext, #value: #ty| {
                    let this = ::std::sync::Arc::clone(&setter_this);
                    async move {
                        #(#fetch)*
                        #body
                    }
                })
            }
        })
    }
}

/// `greet_all` → `GreetAll`.
fn pascal_case(rust: &str) -> String {
    rust.trim_start_matches("r#")
        .split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The D-Bus member name rules, at compile time.
fn check_member(name: &str, span: proc_macro2::Span) -> syn::Result<()> {
    if is_name_element(name) && name.len() <= 255 {
        Ok(())
    } else {
        Err(syn::Error::new(
            span,
            format!("{name:?} is not a D-Bus member name ([A-Za-z_][A-Za-z0-9_]*)"),
        ))
    }
}

/// `&Caller`, `&ObjectHandle` or `&Connection` (with or without their
/// `pidbus::` path): what the call gives rather than the caller sends.
fn given_by_call(ty: &Type) -> Option<Given> {
    let Type::Reference(reference) = ty else {
        return None;
    };
    let Type::Path(path) = &*reference.elem else {
        return None;
    };
    match path.path.segments.last()?.ident.to_string().as_str() {
        "Caller" => Some(Given::Caller),
        "ObjectHandle" => Some(Given::Object),
        "Connection" => Some(Given::Connection),
        _ => None,
    }
}

/// A type whose last path segment is `Result`.
fn is_result(ty: &Type) -> bool {
    let Type::Path(path) = ty else {
        return false;
    };
    path.path
        .segments
        .last()
        .is_some_and(|s| s.ident == "Result")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_names_become_dbus_names() {
        assert_eq!(pascal_case("greet"), "Greet");
        assert_eq!(pascal_case("greet_all_now"), "GreetAllNow");
        assert_eq!(pascal_case("r#type"), "Type");
    }

    #[test]
    fn bad_names_are_compile_errors() {
        let error = expand(quote!(name = "nodots"), quote!(impl X {})).unwrap_err();
        assert!(
            error.to_string().contains("not a D-Bus interface name"),
            "{error}"
        );
        let block = quote! {
            impl X {
                #[dbus(name = "Bad.Name")]
                async fn f(&self) {}
            }
        };
        let error = expand(quote!(name = "a.B"), block).unwrap_err();
        assert!(
            error.to_string().contains("not a D-Bus member name"),
            "{error}"
        );
        let block = quote!(impl X { async fn f(&self, s: &str) {} });
        let error = expand(quote!(name = "a.B"), block).unwrap_err();
        assert!(error.to_string().contains("owned values"), "{error}");
    }

    #[test]
    fn a_method_declares_its_arguments_by_name_and_skips_the_caller() {
        let block = quote! {
            impl Greeter {
                #[authorize("org.example.greet")]
                async fn greet(&self, caller: &Caller, name: String, times: u32) -> Result<String, MethodError> {
                    Ok(name)
                }
                fn helper(&self) {}
            }
        };
        let out = expand(quote!(name = "org.example.Greeter"), block)
            .unwrap()
            .to_string();
        assert!(out.contains("\"Greet\""), "{out}");
        assert!(
            out.contains("arg_names (\"Greet\" , & [\"name\" , \"times\"]"),
            "{out}"
        );
        assert!(
            out.contains("call . authorize (\"org.example.greet\")"),
            "{out}"
        );
        assert!(
            out.contains("this . greet (call . caller () , name , times)"),
            "{out}"
        );
        assert!(!out.contains("\"Helper\""), "only async methods: {out}");
    }
}
