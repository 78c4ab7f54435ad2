//! language-system on an in-memory store: plural forms of en, fr, ru, ar, ja and pl against
//! CLDR's published examples, fallback chains (derived and configured), typed placeholders
//! formatted per locale, errors that name the key or argument, refusals that write
//! nothing, MissingKeys, coverage, and machine translations (from a scripted translator:
//! ai-integration over NATS is covered by the e2e suite) kept apart from reviewed strings.

use std::sync::Mutex;

use aicore_proto::aicore::language_system::v1::*;
use aicore_proto::{Code, Request};

use futures::future::BoxFuture;

use super::*;

/// A translator that answers from a script: `text` → answer, else `[fr] text`.
#[derive(Default)]
struct Scripted {
    answers: HashMap<String, String>,
    offline: bool,
    calls: Mutex<Vec<(String, String, String)>>,
}

impl Translator for Scripted {
    fn translate(
        &self,
        from: String,
        to: String,
        text: String,
        _note: String,
        _model_id: String,
        _options: CallOptions,
    ) -> BoxFuture<'_, Result<MachineText, Status>> {
        self.calls
            .lock()
            .unwrap()
            .push((from, to.clone(), text.clone()));
        let out = self
            .answers
            .get(&text)
            .cloned()
            .unwrap_or_else(|| format!("[{to}] {text}"));
        let offline = self.offline;
        Box::pin(async move {
            Ok(MachineText {
                text: out,
                model_id: "m1".into(),
                offline,
            })
        })
    }
}

fn domain_with(config: LanguageSystemConfig, t: Arc<Scripted>) -> LanguageSystem {
    let (ctx, _) = Ctx::for_tests();
    LanguageSystem::new(ctx, config, t).unwrap()
}

fn domain() -> LanguageSystem {
    domain_with(LanguageSystemConfig::default(), Arc::default())
}

fn s(key: &str, text: &str) -> LocalizedString {
    LocalizedString {
        key: key.into(),
        text: text.into(),
        ..Default::default()
    }
}

fn plural(key: &str, other: &str, forms: &[(&str, &str)]) -> LocalizedString {
    LocalizedString {
        plural_forms: forms
            .iter()
            .map(|(c, t)| (c.to_string(), t.to_string()))
            .collect(),
        ..s(key, other)
    }
}

async fn put(
    d: &LanguageSystem,
    locale: &str,
    strings: Vec<LocalizedString>,
) -> Result<PutStringsResponse, Status> {
    d.put_strings(Request::new(PutStringsRequest {
        locale: locale.into(),
        strings,
        replace_all: false,
    }))
    .await
}

fn item(key: &str) -> TranslateItem {
    TranslateItem {
        key: key.into(),
        ..Default::default()
    }
}

fn counted(key: &str, n: i64) -> TranslateItem {
    TranslateItem {
        count: Some(n),
        ..item(key)
    }
}

fn with_args(key: &str, args: &[(&str, argument::Value)]) -> TranslateItem {
    TranslateItem {
        args: args
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Argument {
                        value: Some(v.clone()),
                    },
                )
            })
            .collect(),
        ..item(key)
    }
}

async fn tr(
    d: &LanguageSystem,
    locale: &str,
    items: Vec<TranslateItem>,
) -> Result<Vec<Translation>, Status> {
    tr_opt(d, locale, items, false).await
}

async fn tr_opt(
    d: &LanguageSystem,
    locale: &str,
    items: Vec<TranslateItem>,
    allow_machine: bool,
) -> Result<Vec<Translation>, Status> {
    Ok(d.translate(Request::new(TranslateRequest {
        locale: locale.into(),
        items,
        allow_machine,
    }))
    .await?
    .translations)
}

async fn one(d: &LanguageSystem, locale: &str, it: TranslateItem) -> Translation {
    tr(d, locale, vec![it]).await.unwrap().remove(0)
}

fn field(e: &Status) -> &str {
    &e.field_violations[0].field
}

/// Puts one plural string with a form per category the locale uses, each text naming
/// its category, and checks the category chosen for each CLDR example number.
async fn check_plurals(locale: &str, forms: &[&str], examples: &[(&str, &[i64])]) {
    let d = domain();
    let fs: Vec<(&str, &str)> = forms.iter().map(|c| (*c, *c)).collect();
    put(&d, locale, vec![plural("n", "other", &fs)])
        .await
        .unwrap();
    let data = d.cldr(locale).unwrap();
    let used: Vec<&str> = data.categories().map(format::category_name).collect();
    let mut want: Vec<&str> = forms.to_vec();
    want.push("other");
    want.sort();
    let mut used_sorted = used.clone();
    used_sorted.sort();
    assert_eq!(used_sorted, want, "{locale} uses these categories");
    for (category, numbers) in examples {
        for n in *numbers {
            assert_eq!(
                format::category_name(data.plural(*n)),
                *category,
                "{locale}: {n}"
            );
            if forms.is_empty() {
                // A string without forms has one text for every count.
                assert_eq!(one(&d, locale, counted("n", *n)).await.text, "other");
                continue;
            }
            let t = one(&d, locale, counted("n", *n)).await;
            assert_eq!(
                (t.text.as_str(), t.plural_category.as_str()),
                (*category, *category),
                "{locale}: {n}"
            );
        }
    }
}

// The examples are CLDR's (plurals.xml, `@integer` samples of each rule).
#[tokio::test]
async fn plural_forms_follow_cldr_for_en_fr_ru_ar_ja_pl() {
    check_plurals(
        "en",
        &["one"],
        &[("one", &[1]), ("other", &[0, 2, 5, 16, 100, 1000])],
    )
    .await;
    check_plurals(
        "fr",
        &["one", "many"],
        &[
            ("one", &[0, 1]),
            ("many", &[1_000_000, 2_000_000]),
            ("other", &[2, 5, 17, 100, 1000, 10_000]),
        ],
    )
    .await;
    check_plurals(
        "ru",
        &["one", "few", "many"],
        &[
            ("one", &[1, 21, 31, 41, 101, 1001]),
            ("few", &[2, 3, 4, 22, 23, 24, 32, 102, 1002]),
            ("many", &[0, 5, 6, 11, 12, 14, 19, 20, 25, 100, 111, 1000]),
        ],
    )
    .await;
    check_plurals(
        "ar",
        &["zero", "one", "two", "few", "many"],
        &[
            ("zero", &[0]),
            ("one", &[1]),
            ("two", &[2]),
            ("few", &[3, 4, 10, 103, 110, 1003]),
            ("many", &[11, 12, 26, 99, 111, 1011]),
            ("other", &[100, 101, 102, 200, 1000]),
        ],
    )
    .await;
    check_plurals("ja", &[], &[("other", &[0, 1, 2, 15, 100, 1000])]).await;
    check_plurals(
        "pl",
        &["one", "few", "many"],
        &[
            ("one", &[1]),
            ("few", &[2, 3, 4, 22, 23, 24, 32, 102, 1002]),
            ("many", &[0, 5, 11, 12, 14, 19, 21, 25, 100, 112, 1000]),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_plural_form_the_locale_does_not_have_is_refused_and_nothing_is_written() {
    let d = domain();
    for (locale, bad) in [("ja", "one"), ("en", "few"), ("fr", "two"), ("ru", "other")] {
        let e = put(
            &d,
            locale,
            vec![s("ok", "fine"), plural("n", "x", &[(bad, "y")])],
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument, "{locale} {bad}");
        assert_eq!(field(&e), format!("strings[1].plural_forms.{bad}"));
        let e = tr(&d, locale, vec![item("ok")]).await.unwrap_err();
        assert_eq!(e.code, Code::NotFound, "nothing of {locale} was written");
    }
    // A plural string needs a count.
    put(
        &d,
        "en",
        vec![plural("apples", "{count} apples", &[("one", "one apple")])],
    )
    .await
    .unwrap();
    let e = tr(&d, "en", vec![item("apples")]).await.unwrap_err();
    assert_eq!(field(&e), "items[0].count");
    assert_eq!(one(&d, "en", counted("apples", 1)).await.text, "one apple");
    assert_eq!(
        one(&d, "en", counted("apples", 1200)).await.text,
        "1,200 apples"
    );
}

#[tokio::test]
async fn fallback_chains_drop_subtags_then_reach_the_default_or_follow_the_configuration() {
    let d = domain();
    put(
        &d,
        "en",
        vec![s("a", "A-en"), s("b", "B-en"), s("c", "C-en")],
    )
    .await
    .unwrap();
    put(&d, "fr", vec![s("a", "A-fr"), s("b", "B-fr")])
        .await
        .unwrap();
    put(&d, "fr-CA", vec![s("a", "A-fr-CA")]).await.unwrap();
    let got = tr(&d, "fr-ca", vec![item("a"), item("b"), item("c")])
        .await
        .unwrap();
    let pairs: Vec<(&str, &str)> = got
        .iter()
        .map(|t| (t.text.as_str(), t.resolved_locale.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [("A-fr-CA", "fr-CA"), ("B-fr", "fr"), ("C-en", "en")]
    );
    // A script and region both drop: zh-Hant-TW → zh-Hant → zh → en.
    assert_eq!(
        format::chain("zh-Hant-TW", None, "en"),
        ["zh-Hant-TW", "zh-Hant", "zh", "en"]
    );
    // Empty locale is the default.
    assert_eq!(one(&d, "", item("a")).await.text, "A-en");
    // An unknown key in the whole chain is NotFound naming the item.
    let e = tr(&d, "fr-CA", vec![item("a"), item("nope")])
        .await
        .unwrap_err();
    assert_eq!((e.code, field(&e)), (Code::NotFound, "items[1].key"));
    assert!(e.message.contains("fr-CA → fr → en"), "{}", e.message);
    let e = tr(&d, "not a tag", vec![item("a")]).await.unwrap_err();
    assert_eq!(field(&e), "locale");

    // Configured: pt-BR tries pt-PT before pt; the default locale is configurable too.
    let config = LanguageSystemConfig {
        default_locale: "de".into(),
        fallbacks: [(
            "pt-BR".to_string(),
            vec!["pt-PT".to_string(), "pt".to_string()],
        )]
        .into(),
        ..Default::default()
    };
    let d = domain_with(config, Arc::default());
    put(&d, "de", vec![s("x", "X-de"), s("y", "Y-de")])
        .await
        .unwrap();
    put(&d, "pt-PT", vec![s("x", "X-pt-PT")]).await.unwrap();
    let got = tr(&d, "pt-BR", vec![item("x"), item("y")]).await.unwrap();
    assert_eq!(got[0].resolved_locale, "pt-PT");
    assert_eq!(got[1].resolved_locale, "de");
    // A misconfigured tag is refused at build.
    let (ctx, _) = Ctx::for_tests();
    let bad = LanguageSystemConfig {
        default_locale: "english please".into(),
        ..Default::default()
    };
    assert!(LanguageSystem::new(ctx, bad, Arc::new(Scripted::default())).is_err());
}

#[tokio::test]
async fn typed_placeholders_are_formatted_per_locale_and_errors_name_the_argument() {
    let d = domain();
    let text = "{who} paid {n} gold ({rate:number}%) on {when:date}, at {when:datetime}";
    for locale in ["en", "fr", "de"] {
        put(&d, locale, vec![s("paid", text)]).await.unwrap();
    }
    let when = prost_types::Timestamp {
        seconds: 1_736_957_375, // 2025-01-15T16:09:35Z
        nanos: 0,
    };
    let args = [
        ("who", argument::Value::Text("Ana".into())),
        ("n", argument::Value::Integer(1_234_567)),
        ("rate", argument::Value::Number(12.5)),
        ("when", argument::Value::Time(when)),
    ];
    let en = one(&d, "en", with_args("paid", &args)).await.text;
    assert_eq!(
        en,
        "Ana paid 1,234,567 gold (12.5%) on Jan 15, 2025, at Jan 15, 2025, 4:09\u{202f}PM"
    );
    let fr = one(&d, "fr", with_args("paid", &args)).await.text;
    assert_eq!(
        fr,
        "Ana paid 1\u{202f}234\u{202f}567 gold (12,5%) on 15 janv. 2025, at 15 janv. 2025, 16:09"
    );
    let de = one(&d, "de", with_args("paid", &args)).await.text;
    assert_eq!(
        de,
        "Ana paid 1.234.567 gold (12,5%) on 15.01.2025, at 15.01.2025, 16:09"
    );

    // A missing argument, and one of another type than declared, name it.
    let e = tr(&d, "en", vec![item("paid"), with_args("paid", &args[..3])])
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, field(&e)),
        (Code::InvalidArgument, "items[0].args.who")
    );
    let e = tr(&d, "en", vec![with_args("paid", &args[..3])])
        .await
        .unwrap_err();
    assert_eq!(field(&e), "items[0].args.when");
    let mut wrong = args.clone();
    wrong[2].1 = argument::Value::Text("lots".into());
    let e = tr(&d, "en", vec![with_args("paid", &wrong)])
        .await
        .unwrap_err();
    assert_eq!(field(&e), "items[0].args.rate");
    assert!(e.message.contains("number"), "{}", e.message);
    wrong[2].1 = argument::Value::Number(f64::NAN);
    let e = tr(&d, "en", vec![with_args("paid", &wrong)])
        .await
        .unwrap_err();
    assert_eq!(field(&e), "items[0].args.rate");

    // Literal braces, and broken templates refused naming the form.
    put(&d, "en", vec![s("braces", "{{literal}} {x}")])
        .await
        .unwrap();
    let t = one(
        &d,
        "en",
        with_args("braces", &[("x", argument::Value::Text("!".into()))]),
    )
    .await;
    assert_eq!(t.text, "{literal} !");
    for (bad, why) in [
        ("oops {x", "never closed"),
        ("a } b", "lone"),
        ("{x:money}", "unknown type"),
        ("{}", "name"),
    ] {
        let e = put(&d, "en", vec![s("k", "fine"), plural("b", bad, &[])])
            .await
            .unwrap_err();
        assert_eq!(field(&e), "strings[1].text", "{bad}");
        assert!(e.message.contains(why), "{bad}: {}", e.message);
    }
    let e = put(&d, "en", vec![plural("b", "x", &[("one", "{y")])])
        .await
        .unwrap_err();
    assert_eq!(field(&e), "strings[0].plural_forms.one");
    assert_eq!(
        tr(&d, "en", vec![item("k")]).await.unwrap_err().code,
        Code::NotFound
    );
}

#[tokio::test]
async fn select_forms_pick_by_a_text_argument() {
    let d = domain();
    let greet = LocalizedString {
        select: "gender".into(),
        select_forms: [
            ("female".to_string(), "Welcome, madam {name}".to_string()),
            ("male".to_string(), "Welcome, sir {name}".to_string()),
        ]
        .into(),
        ..s("greet", "Welcome, {name}")
    };
    put(&d, "en", vec![greet.clone()]).await.unwrap();
    let pick = |g: &str| {
        with_args(
            "greet",
            &[
                ("gender", argument::Value::Text(g.into())),
                ("name", argument::Value::Text("Kim".into())),
            ],
        )
    };
    assert_eq!(
        one(&d, "en", pick("female")).await.text,
        "Welcome, madam Kim"
    );
    assert_eq!(one(&d, "en", pick("male")).await.text, "Welcome, sir Kim");
    assert_eq!(one(&d, "en", pick("other")).await.text, "Welcome, Kim");
    let e = tr(
        &d,
        "en",
        vec![with_args(
            "greet",
            &[("name", argument::Value::Text("Kim".into()))],
        )],
    )
    .await
    .unwrap_err();
    assert_eq!(field(&e), "items[0].args.gender");
    // Plural and select together are refused.
    let both = LocalizedString {
        plural_forms: [("one".to_string(), "x".to_string())].into(),
        ..greet
    };
    let e = put(&d, "en", vec![both]).await.unwrap_err();
    assert_eq!(field(&e), "strings[0].select");
}

#[tokio::test]
async fn put_strings_validates_counts_changes_and_replaces() {
    let d = domain();
    let e = put(&d, "en", vec![]).await.unwrap_err();
    assert_eq!(field(&e), "strings");
    let e = put(&d, "en", vec![s("a", "1"), s("a", "2")])
        .await
        .unwrap_err();
    assert_eq!(field(&e), "strings[1].key");
    let e = put(&d, "en", vec![s("has space", "1")]).await.unwrap_err();
    assert_eq!(field(&e), "strings[0].key");
    let e = put(&d, "", vec![s("a", "1")]).await.unwrap_err();
    assert_eq!(field(&e), "locale");

    let r = put(&d, "en", vec![s("a", "1"), s("b", "2"), s("c", "3")])
        .await
        .unwrap();
    assert_eq!((r.written, r.removed, r.version), (3, 0, 1));
    // The same strings again change nothing.
    let r = put(&d, "en", vec![s("a", "1"), s("b", "2")]).await.unwrap();
    assert_eq!((r.written, r.removed, r.version), (0, 0, 1));
    let r = d
        .put_strings(Request::new(PutStringsRequest {
            locale: "en".into(),
            strings: vec![s("a", "1"), s("b", "two")],
            replace_all: true,
        }))
        .await
        .unwrap();
    assert_eq!((r.written, r.removed, r.version), (1, 1, 2));
    assert_eq!(
        tr(&d, "en", vec![item("c")]).await.unwrap_err().code,
        Code::NotFound
    );
    assert_eq!(one(&d, "en", item("b")).await.text, "two");

    // The per-locale limit refuses the whole write.
    let d = domain_with(
        LanguageSystemConfig {
            max_strings_per_locale: 2,
            ..Default::default()
        },
        Arc::default(),
    );
    put(&d, "en", vec![s("a", "1"), s("b", "2")]).await.unwrap();
    let e = put(&d, "en", vec![s("c", "3")]).await.unwrap_err();
    assert_eq!((e.code, field(&e)), (Code::ResourceExhausted, "strings"));
    assert_eq!(
        tr(&d, "en", vec![item("c")]).await.unwrap_err().code,
        Code::NotFound
    );
}

async fn missing(
    d: &LanguageSystem,
    locale: &str,
    page_size: i32,
    token: &str,
) -> MissingKeysResponse {
    d.missing_keys(Request::new(MissingKeysRequest {
        locale: locale.into(),
        base_locale: String::new(),
        page_size,
        page_token: token.into(),
    }))
    .await
    .unwrap()
}

#[tokio::test]
async fn missing_keys_and_coverage_against_the_base_locale() {
    let d = domain();
    put(
        &d,
        "en",
        vec![s("a", "1"), s("b", "2"), s("c", "3"), s("d", "4")],
    )
    .await
    .unwrap();
    put(&d, "fr", vec![s("b", "deux"), s("z", "only fr")])
        .await
        .unwrap();
    let r = missing(&d, "fr", 2, "").await;
    assert_eq!(r.keys, ["a", "c"]);
    assert!(!r.next_page_token.is_empty());
    let r2 = missing(&d, "fr", 2, &r.next_page_token).await;
    assert_eq!(r2.keys, ["d"]);
    assert_eq!(r2.next_page_token, "");
    let e = d
        .missing_keys(Request::new(MissingKeysRequest {
            locale: "en".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(field(&e), "base_locale");

    let l = d
        .list_locales(Request::new(ListLocalesRequest::default()))
        .await
        .unwrap();
    assert_eq!(l.default_locale, "en");
    let fr = l.locales.iter().find(|l| l.tag == "fr").unwrap();
    assert_eq!((fr.string_count, fr.coverage), (2, 0.25));
    assert_eq!(fr.fallback_chain, ["en"]);
    let en = l.locales.iter().find(|l| l.tag == "en").unwrap();
    assert_eq!(en.coverage, 1.0);
}

fn scripted(answers: &[(&str, &str)], offline: bool) -> Arc<Scripted> {
    Arc::new(Scripted {
        answers: answers
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        offline,
        calls: Mutex::default(),
    })
}

async fn machine(
    d: &LanguageSystem,
    locale: &str,
    keys: &[&str],
) -> Result<MachineTranslateResponse, Status> {
    d.machine_translate(Request::new(MachineTranslateRequest {
        locale: locale.into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        ..Default::default()
    }))
    .await
}

#[tokio::test]
async fn machine_translations_are_marked_kept_apart_and_replaced_by_review() {
    let t = scripted(
        &[
            ("Start", "Commencer"),
            ("Hello {name}", "Bonjour"),
            ("Bye {name}", "Au revoir {name}"),
        ],
        false,
    );
    let d = domain_with(LanguageSystemConfig::default(), t.clone());
    put(
        &d,
        "en",
        vec![
            s("menu.start", "Start"),
            s("greet", "Hello {name}"),
            s("bye", "Bye {name}"),
            plural("apples", "{count} apples", &[("one", "an apple")]),
            s("done", "Done"),
        ],
    )
    .await
    .unwrap();
    put(&d, "fr", vec![s("done", "Fini")]).await.unwrap();
    let r = machine(&d, "fr", &[]).await.unwrap();
    let stored: Vec<(&str, &str)> = r
        .translated
        .iter()
        .map(|s| (s.key.as_str(), s.text.as_str()))
        .collect();
    assert_eq!(
        stored,
        [("bye", "Au revoir {name}"), ("menu.start", "Commencer")]
    );
    assert!(r.translated.iter().all(|s| s.machine_translated));
    let failed: Vec<&str> = r.failures.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(
        failed,
        ["apples", "greet"],
        "a plural string and a dropped placeholder"
    );
    assert_eq!(r.model_id, "m1");
    // The source went to the translator as data; the reviewed `done` was not sent.
    let calls = t.calls.lock().unwrap().clone();
    assert!(
        calls
            .iter()
            .all(|(from, to, text)| from == "en" && to == "fr" && text != "Done")
    );

    // Translate skips machine strings unless asked, and marks them when it uses them.
    let plain = one(&d, "fr", item("menu.start")).await;
    assert_eq!(
        (plain.text.as_str(), plain.resolved_locale.as_str()),
        ("Start", "en")
    );
    let m = tr_opt(&d, "fr", vec![item("menu.start")], true)
        .await
        .unwrap()
        .remove(0);
    assert_eq!((m.text.as_str(), m.machine_translated), ("Commencer", true));
    // MissingKeys still lists them, marked; ListLocales counts them apart.
    let mk = missing(&d, "fr", 100, "").await;
    assert_eq!(mk.keys, ["apples", "bye", "greet", "menu.start"]);
    assert_eq!(mk.machine_translated_keys, ["bye", "menu.start"]);
    let l = d
        .list_locales(Request::new(ListLocalesRequest::default()))
        .await
        .unwrap();
    let fr = l.locales.iter().find(|l| l.tag == "fr").unwrap();
    assert_eq!(
        (fr.string_count, fr.machine_count, fr.coverage),
        (3, 2, 0.2)
    );

    // A reviewed PutStrings replaces the machine string; a new machine run leaves it.
    put(&d, "fr", vec![s("menu.start", "Démarrer")])
        .await
        .unwrap();
    let r = machine(&d, "fr", &["menu.start"]).await.unwrap();
    assert!(r.translated.is_empty());
    assert_eq!(r.failures[0].key, "menu.start");
    let t2 = one(&d, "fr", item("menu.start")).await;
    assert_eq!(
        (t2.text.as_str(), t2.machine_translated),
        ("Démarrer", false)
    );
}

#[tokio::test]
async fn machine_translation_by_the_offline_provider_is_refused_and_writes_nothing() {
    let d = domain_with(LanguageSystemConfig::default(), scripted(&[], true));
    put(&d, "en", vec![s("a", "Start")]).await.unwrap();
    let e = machine(&d, "fr", &[]).await.unwrap_err();
    assert_eq!(e.code, Code::FailedPrecondition);
    assert_eq!(
        missing(&d, "fr", 10, "")
            .await
            .machine_translated_keys
            .len(),
        0
    );
    assert_eq!(
        tr_opt(&d, "fr", vec![item("a")], true).await.unwrap()[0].resolved_locale,
        "en"
    );
    let e = machine(&d, "en", &[]).await.unwrap_err();
    assert_eq!(field(&e), "base_locale");
    let e = d
        .machine_translate(Request::new(MachineTranslateRequest {
            locale: "fr".into(),
            max_keys: 1000,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(field(&e), "max_keys");
}
