use super::*;

#[test]
fn secrets_compare_whole() {
    assert!(same_secret(b"s3cret", b"s3cret"));
    assert!(!same_secret(b"s3cre", b"s3cret"));
    assert!(!same_secret(b"s3crets", b"s3cret"));
    assert!(!same_secret(b"", b"s3cret"));
    assert!(!same_secret(b"s3creT", b"s3cret"));
    assert!(same_secret(b"", b""));
}

fn req(uri: &str, headers: &[(&str, &str)]) -> ::http::Request<()> {
    let mut b = ::http::Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).expect("request")
}

fn shared(token: &str) -> Auth {
    Auth::new(Some(token.into()), None, None, AllowedOrigins::default())
}

fn split() -> Auth {
    Auth::new(
        Some("both".into()),
        Some("agent".into()),
        Some("dash".into()),
        AllowedOrigins::default(),
    )
}

#[test]
fn token_from_header_or_query() {
    let a = shared("s3cret");
    let ok = |r: &::http::Request<()>| a.check(Role::Dashboard, r).is_ok();
    assert!(ok(&req("/ws", &[("authorization", "Bearer s3cret")])));
    assert!(ok(&req("/ws?token=s3cret", &[])));
    assert!(ok(&req("/ws?serverId=a&token=s3cr%65t", &[])));
    assert!(!ok(&req("/ws", &[])));
    assert!(!ok(&req("/ws?token=s3cre", &[])));
    assert!(!ok(&req("/ws", &[("authorization", "Bearer wrong")])));
    let open = Auth::default();
    assert_eq!(open.grant(&req("/ws", &[])), Grant::ALL);
}

#[test]
fn a_shared_token_grants_both_roles() {
    assert_eq!(shared("t").grant(&req("/?token=t", &[])), Grant::ALL);
}

#[test]
fn each_role_its_own_token_else_the_shared_one() {
    let a = split();
    let g = |t: &str| a.grant(&req(&format!("/?token={t}"), &[]));
    assert_eq!(
        g("agent"),
        Grant {
            agent: true,
            dashboard: false
        }
    );
    assert_eq!(
        g("dash"),
        Grant {
            agent: false,
            dashboard: true
        }
    );
    // Each role has its own token, so the shared one opens nothing.
    assert_eq!(
        g("both"),
        Grant {
            agent: false,
            dashboard: false
        }
    );
    let only_agent = Auth::new(
        Some("both".into()),
        Some("agent".into()),
        None,
        AllowedOrigins::default(),
    );
    assert_eq!(only_agent.token(Role::Agent), Some("agent"));
    assert_eq!(only_agent.token(Role::Dashboard), Some("both"));
    // No shared token: a role without its own is open.
    let open_dash = Auth::new(None, Some("agent".into()), None, AllowedOrigins::default());
    assert!(open_dash.grant(&req("/ws", &[])).dashboard);
    assert!(!open_dash.grant(&req("/ws", &[])).agent);
}

#[test]
fn refusals_name_the_token_the_route_needs() {
    let a = split();
    let e = a
        .check(Role::Agent, &req("/metrics?token=dash", &[]))
        .unwrap_err();
    assert_eq!(e.status(), ::http::StatusCode::UNAUTHORIZED);
    assert!(e.to_string().contains("the agent token"), "{e}");
    let e = a
        .admit(&[Role::Dashboard], &req("/ws?token=agent", &[]))
        .unwrap_err();
    assert!(e.to_string().contains("the dashboard token"), "{e}");
    let e = a
        .admit(&[Role::Agent, Role::Dashboard], &req("/", &[]))
        .unwrap_err();
    assert!(
        e.to_string().contains("the agent or the dashboard token"),
        "{e}"
    );
}

#[test]
fn origins_parse_and_normalise() {
    let o = AllowedOrigins::parse(" https://Dash.Example.com , http://10.0.0.5:8080,,http://a:80")
        .expect("valid");
    assert_eq!(
        o.0,
        [
            "https://dash.example.com",
            "http://10.0.0.5:8080",
            "http://a"
        ]
    );
    for bad in [
        "dash.example.com",
        "https://dash.example.com/",
        "https://u@dash",
        "ftp://x",
        "https://",
    ] {
        assert_eq!(
            AllowedOrigins::parse(bad),
            Err(OriginError(bad.into())),
            "{bad}"
        );
    }
    assert_eq!(
        AllowedOrigins::parse("").expect("empty"),
        AllowedOrigins::default()
    );
}

#[test]
fn a_foreign_origin_loses_the_dashboard_role() {
    let a = Auth::new(
        None,
        None,
        None,
        AllowedOrigins::parse("https://dash.example").expect("valid"),
    );
    let upgrade = |origin: Option<&str>, host: &str, roles: &[Role]| {
        let mut h = vec![("host", host)];
        if let Some(o) = origin {
            h.push(("origin", o));
        }
        a.admit(roles, &req("/ws", &h))
    };
    let dash = &[Role::Dashboard];
    // No Origin: not a browser; own origin (default port or not); a listed one.
    assert_eq!(upgrade(None, "svc:8080", dash), Ok(Grant::ALL));
    assert_eq!(
        upgrade(Some("http://svc:8080"), "svc:8080", dash),
        Ok(Grant::ALL)
    );
    assert_eq!(upgrade(Some("http://SVC"), "svc:80", dash), Ok(Grant::ALL));
    assert_eq!(upgrade(Some("https://svc"), "svc", dash), Ok(Grant::ALL));
    assert_eq!(
        upgrade(Some("https://dash.example:443"), "svc:8080", dash),
        Ok(Grant::ALL)
    );
    // Foreign: refused where only a dashboard may connect, an agent elsewhere.
    for evil in [
        "http://evil.example",
        "http://svc:8081",
        "null",
        "https://svc:8080.evil",
    ] {
        let e = upgrade(Some(evil), "svc:8080", dash).unwrap_err();
        assert_eq!(e.status(), ::http::StatusCode::FORBIDDEN, "{evil}");
        assert!(e.to_string().contains(evil), "{e}");
        assert!(e.to_string().contains("--allowed-origins"), "{e}");
    }
    assert_eq!(
        upgrade(
            Some("http://evil.example"),
            "svc:8080",
            &[Role::Agent, Role::Dashboard]
        ),
        Ok(Grant {
            agent: true,
            dashboard: false
        })
    );
}

#[test]
fn query_decoding() {
    assert_eq!(query_param("a=1&b=x%2Cy", "b").as_deref(), Some("x,y"));
    assert_eq!(query_param("a=1", "b"), None);
    assert_eq!(query_param("b=%zz%", "b").as_deref(), Some("%zz%"));
}

#[test]
fn agents_need_a_client_certificate_when_asked() {
    let a = shared("s3cret").agents_need_client_cert(true);
    let bare = req("/ingest", &[("authorization", "Bearer s3cret")]);
    let e = a.check(Role::Agent, &bare).unwrap_err();
    assert!(
        matches!(e, Refusal::Forbidden(ref m) if m.contains("--tls-client-ca")),
        "{e}"
    );
    assert!(a.check(Role::Dashboard, &bare).is_ok());
    let e = a.admit(&[Role::Agent], &bare).unwrap_err();
    assert!(matches!(e, Refusal::Forbidden(_)), "{e}");
    // On `/` the socket may still be a dashboard.
    let g = a
        .admit(&[Role::Agent, Role::Dashboard], &bare)
        .expect("dashboard");
    assert_eq!((g.agent, g.dashboard), (false, true));
    let mut with_cert = req("/ingest", &[("authorization", "Bearer s3cret")]);
    with_cert.extensions_mut().insert(ClientCert);
    assert!(a.check(Role::Agent, &with_cert).is_ok());
    assert!(a.admit(&[Role::Agent], &with_cert).expect("agent").agent);
    // A wrong token is still a 401, certificate or not.
    let mut wrong = req("/ingest", &[("authorization", "Bearer nope")]);
    wrong.extensions_mut().insert(ClientCert);
    assert!(matches!(
        a.check(Role::Agent, &wrong),
        Err(Refusal::Unauthorized(_))
    ));
}
