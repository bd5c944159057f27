use super::*;

fn identity(uid: u32, gid: u32) -> ProcessIdentity {
    ProcessIdentity {
        pid: 100,
        uid,
        gid,
        groups: vec![gid, 27],
        pidfs_id: Some(5),
        start_time: None,
        boot_id: "b".into(),
        exe: Some("/usr/bin/app".into()),
        unit: Some("app.service".into()),
        user_unit: None,
        exe_unverified: None,
        sender_proof_forgeable: false,
        facts_withheld: false,
        cgroup: Some("/system.slice/app.service".into()),
        label: Some("system_u:system_r:app_t".into()),
        exited_at_connect: false,
    }
}

fn policy(text: &str) -> Policy {
    parse(&[("p.toml".into(), text.into())]).unwrap()
}

fn error(text: &str) -> String {
    parse(&[("p.toml".into(), text.into())])
        .unwrap_err()
        .to_string()
}

const BROKER: u32 = 0;

#[test]
fn last_matching_rule_wins_and_defaults_decide_the_rest() {
    let p = policy(
        r#"
[defaults]
own = "deny"

[[rule]]
kind = "own"
name = "org.example.*"
decision = "allow"

[[rule]]
kind = "own"
name = "org.example.Secret"
decision = "deny"
"#,
    );
    let who = identity(1000, 1000);
    let own = |name: &'static str| {
        let names = [name];
        let request = Request {
            names: &names,
            ..Request::new(ActionKind::Own, &who)
        };
        p.decide(&request, BROKER)
    };
    let v = own("org.example.Foo");
    assert!(v.allowed());
    assert_eq!(v.origin.to_string(), "rule at p.toml:5");
    assert!(
        own("org.example").allowed(),
        "the prefix itself is below it"
    );
    let v = own("org.example.Secret");
    assert!(!v.allowed());
    assert_eq!(v.origin.to_string(), "rule at p.toml:10");
    let v = own("org.other");
    assert!(!v.allowed());
    assert_eq!(v.origin.to_string(), "default at p.toml:3");
    assert!(
        !own("org.examplefoo").allowed(),
        "prefixes match whole components"
    );
    let monitor = p.decide(&Request::new(ActionKind::Monitor, &who), BROKER);
    assert_eq!(monitor.origin, Origin::BuiltIn);
    assert!(!monitor.allowed());
}

#[test]
fn every_subject_matcher_allows_and_denies_as_written() {
    let cases: [(&str, bool); 14] = [
        ("user = 1000", true),
        ("user = 1001", false),
        ("user = \"root\"", false),
        ("group = 27", true),
        ("group = 1000", true),
        ("group = 4", false),
        ("exe = \"/usr/bin/app\"", true),
        ("exe = \"/usr/bin/other\"", false),
        ("unit = \"app.service\"", true),
        ("cgroup = \"/system.slice\"", true),
        ("cgroup = \"/system.sl\"", false),
        ("label = \"system_u:system_r:app_t\"", true),
        ("same_user_as_target = true", false),
        ("broker_user = false", true),
    ];
    let who = identity(1000, 1000);
    let target = identity(0, 0);
    for (matcher, expect) in cases {
        let p = policy(&format!(
            "[defaults]\npidfd = \"deny\"\n[[rule]]\nkind = \"pidfd\"\n{matcher}\ndecision = \"allow\"\n"
        ));
        let request = Request {
            target: Some(&target),
            ..Request::new(ActionKind::Pidfd, &who)
        };
        assert_eq!(p.decide(&request, BROKER).allowed(), expect, "{matcher}");
    }
}

#[test]
fn rules_on_facts_a_process_gone_before_accept_lost_fail_closed() {
    // What the kernel still proves decides; what /proc would have said
    // neither grants (allow) nor escapes (deny).
    let mut gone = identity(1000, 1000);
    gone.exited_at_connect = true;
    gone.exe = None;
    gone.unit = None;
    gone.cgroup = None;
    let cases = [
        ("user = 1000", "allow", true),
        ("exe = \"/usr/bin/app\"", "allow", false),
        ("unit = \"app.service\"", "allow", false),
        ("cgroup = \"/system.slice\"", "allow", false),
        ("sender_proof = \"kernel\"", "allow", false),
        ("exe = \"/usr/bin/app\"", "deny", false),
        ("unit = \"other.service\"", "deny", false),
        ("sender_proof = \"forgeable\"", "deny", false),
        ("user = 1001", "deny", true),
    ];
    for (matcher, decision, expect) in cases {
        let default = if decision == "allow" { "deny" } else { "allow" };
        let p = policy(&format!(
            "[defaults]\nconnect = \"{default}\"\n[[rule]]\nkind = \"connect\"\n{matcher}\ndecision = \"{decision}\"\n"
        ));
        let request = Request::new(ActionKind::Connect, &gone);
        assert_eq!(
            p.decide(&request, BROKER).allowed(),
            expect,
            "{decision} {matcher}"
        );
    }
}

#[test]
fn rules_on_facts_the_kernel_withheld_fail_closed_and_the_rest_still_decide() {
    // A broker without privilege over another user's process: its exe
    // and namespaces are withheld; its cgroup and unit are not.
    let mut other = identity(1000, 1000);
    other.facts_withheld = true;
    other.exe = None;
    let cases = [
        ("exe = \"/usr/bin/app\"", "allow", false),
        ("exe = \"/usr/bin/app\"", "deny", false),
        ("sender_proof = \"kernel\"", "allow", false),
        ("sender_proof = \"forgeable\"", "deny", false),
        ("unit = \"app.service\"", "allow", true),
        ("unit = \"other.service\"", "deny", true),
        ("user = 1000", "allow", true),
    ];
    for (matcher, decision, expect) in cases {
        let default = if decision == "allow" { "deny" } else { "allow" };
        let p = policy(&format!(
            "[defaults]\nconnect = \"{default}\"\n[[rule]]\nkind = \"connect\"\n{matcher}\ndecision = \"{decision}\"\n"
        ));
        let request = Request::new(ActionKind::Connect, &other);
        assert_eq!(
            p.decide(&request, BROKER).allowed(),
            expect,
            "{decision} {matcher}"
        );
    }
}

#[test]
fn call_rules_match_destination_path_interface_member() {
    let p = policy(
        r#"
[defaults]
call = "allow"
[[rule]]
kind = "call"
name = "org.example.Power"
interface = "org.example.Power"
member = "Reboot"
decision = "deny"
"#,
    );
    let who = identity(1000, 1000);
    let names = ["org.example.Power", ":1.4"];
    let call = |member| Request {
        names: &names,
        path: Some("/"),
        interface: Some("org.example.Power"),
        member: Some(member),
        ..Request::new(ActionKind::Call, &who)
    };
    assert!(!p.decide(&call("Reboot"), BROKER).allowed());
    assert!(p.decide(&call("Status"), BROKER).allowed());
}

#[test]
fn application_actions_have_their_own_defaults() {
    let p = policy(
        r#"
[defaults]
action = "deny"
[[action]]
id = "org.example.reboot"
default = "deny"
[[action]]
id = "org.example.status"
default = "allow"
[[rule]]
kind = "action"
name = "org.example.reboot"
group = 27
decision = "allow"
"#,
    );
    let decide = |id: &'static str, who: &ProcessIdentity| {
        let names = [id];
        let request = Request {
            names: &names,
            ..Request::new(ActionKind::Action, who)
        };
        p.decide(&request, BROKER)
    };
    let sudo = identity(1000, 1000);
    let mut plain = identity(1001, 1001);
    plain.groups = vec![1001];
    assert!(decide("org.example.reboot", &sudo).allowed());
    assert!(!decide("org.example.reboot", &plain).allowed());
    let status = decide("org.example.status", &plain);
    assert!(status.allowed());
    assert_eq!(status.origin.to_string(), "default at p.toml:7");
    assert!(!decide("org.example.undeclared", &plain).allowed());
}

#[test]
fn mistakes_are_refused_with_file_line_and_column() {
    let unknown = error("[[rule]]\nkind = \"own\"\nbogus = 1\ndecision = \"allow\"\n");
    assert!(
        unknown.starts_with("p.toml:3:1: unknown field `bogus`"),
        "{unknown}"
    );
    assert!(
        error("[[rule]]\nkind = \"own\"\nname = \"org.*.x\"\ndecision = \"allow\"\n")
            .starts_with("p.toml:3:8: bad glob")
    );
    assert!(
        error("[[rule]]\nkind = \"own\"\nuser = \"no-such-user-here\"\ndecision = \"allow\"\n")
            .starts_with("p.toml:3:8: unknown user")
    );
    assert!(
        error("[[rule]]\nkind = \"own\"\ngroup = \"no-such-group-here\"\ndecision = \"allow\"\n")
            .starts_with("p.toml:3:9: unknown group")
    );
    assert!(
        error("[[rule]]\nkind = \"fly\"\ndecision = \"allow\"\n")
            .starts_with("p.toml:2:8: unknown kind")
    );
    assert!(
        error("[[rule]]\nkind = \"action\"\nname = \"org.x.y\"\ndecision = \"allow\"\n")
            .starts_with("p.toml:3:8: unknown application action")
    );
    assert!(error("[defaults]\nown = \"maybe\"\n").starts_with("p.toml:2:7:"));
}

#[test]
fn users_and_groups_resolve_by_name() {
    let p = policy(
        "[[rule]]\nkind = \"own\"\nuser = \"root\"\ngroup = \"root\"\ndecision = \"allow\"\n",
    );
    assert_eq!(p.rules()[0].subject.uid, Some(0));
    assert_eq!(p.rules()[0].subject.gid, Some(0));
}

#[test]
fn shipped_defaults_parse_and_say_what_the_readme_says() {
    let system = parse(&[("system.toml".into(), SYSTEM_DEFAULT.into())]).unwrap();
    let user = identity(1000, 1000);
    let root = identity(0, 0);
    let own = |who: &ProcessIdentity| {
        let names = ["org.example.X"];
        let request = Request {
            names: &names,
            ..Request::new(ActionKind::Own, who)
        };
        system.decide(&request, BROKER).allowed()
    };
    assert!(own(&root) && !own(&user));
    let pidfd = |names: &[&str], target: &ProcessIdentity| {
        let request = Request {
            names,
            target: Some(target),
            ..Request::new(ActionKind::Pidfd, &user)
        };
        system.decide(&request, BROKER).allowed()
    };
    assert!(
        pidfd(&["org.example.X"], &root),
        "a name owner's pidfd is readable by all"
    );
    assert!(!pidfd(&[], &root), "a nameless root process's is not");
    assert!(pidfd(&[], &identity(1000, 1000)), "the same user's is");

    let session = parse(&[("session.toml".into(), SESSION_DEFAULT.into())]).unwrap();
    let connect = |who: &ProcessIdentity, broker| {
        session
            .decide(&Request::new(ActionKind::Connect, who), broker)
            .allowed()
    };
    assert!(connect(&user, 1000));
    assert!(!connect(&user, 1001));
    parse(&[("open".into(), OPEN_DEFAULT.into())]).unwrap();
}
