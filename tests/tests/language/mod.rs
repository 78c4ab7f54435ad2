//! language-system on a real appliance: studio strings put over NATS, Translate over the
//! gateway with no token (fallback chain, CLDR plural, typed arguments formatted per
//! locale, an unknown key named), a player refused PutStrings, MissingKeys, and machine
//! translation through ai-integration and a model on the test OpenAI-compatible server:
//! stored marked for review, used only when asked, refused from the offline provider.

use aicore_e2e::openai::{FakeOpenAi, PIECES};
use aicore_proto::Code;
use aicore_proto::aicore::language_system::v1 as ls;
use aicore_proto::aicore::model_management::v1 as mm;

use crate::ai::{opts, player_token, register, with_provider};
use crate::gateway::http::Http;

fn s(key: &str, text: &str) -> ls::LocalizedString {
    ls::LocalizedString {
        key: key.into(),
        text: text.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn strings_translate_over_http_and_machine_translations_wait_for_review() {
    let fake = FakeOpenAi::start().await;
    let (app, _keys) = with_provider(&fake.base_url, "", "").await;
    register(&app, "translator", "openai", &[mm::Capability::Chat, mm::Capability::Completion]).await;
    let c = ls::LanguageSystemClient::new(app.client().await);
    let put = |locale: &str, strings: Vec<ls::LocalizedString>| ls::PutStringsRequest {
        locale: locale.into(),
        strings,
        replace_all: false,
    };
    let apples = ls::LocalizedString {
        plural_forms: [
            ("one".to_string(), "{count} pomme".to_string()),
            ("many".to_string(), "{count} de pommes".to_string()),
        ]
        .into(),
        ..s("apples", "{count} pommes, {when:date}")
    };
    c.put_strings(put("en", vec![s("menu.start", "Start"), s("greet", "Hello {name}"), s("quit", "Quit")]), &opts())
        .await
        .unwrap();
    c.put_strings(put("fr", vec![apples]), &opts()).await.unwrap();
    c.put_strings(put("fr-CA", vec![s("quit", "Quitter")]), &opts()).await.unwrap();

    // Translate over the gateway, public: fr-CA → fr → en, French plural and formats.
    let http = Http::new(&app.http_url);
    let body = r#"{"locale":"fr-CA","items":[
        {"key":"quit"},
        {"key":"apples","count":"2500","args":{"when":{"time":"2025-01-15T16:09:35Z"}}},
        {"key":"apples","count":"1"},
        {"key":"menu.start"}]}"#;
    let r = http.post("/v1/language_system/translate", body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.json());
    let t = &r.json()["translations"];
    assert_eq!((t[0]["text"].as_str(), t[0]["resolvedLocale"].as_str()), (Some("Quitter"), Some("fr-CA")));
    assert_eq!(t[1]["text"], "2\u{202f}500 pommes, 15 janv. 2025");
    assert_eq!((t[1]["pluralCategory"].as_str(), t[1]["resolvedLocale"].as_str()), (Some("other"), Some("fr")));
    assert_eq!(t[2]["text"], "1 pomme");
    assert_eq!((t[3]["text"].as_str(), t[3]["resolvedLocale"].as_str()), (Some("Start"), Some("en")));
    let r = http
        .post("/v1/language_system/translate", r#"{"locale":"fr","items":[{"key":"nope"}]}"#, &[])
        .await;
    assert_eq!((r.status, r.field().as_str()), (404, "items[0].key"));
    let r = http
        .post("/v1/language_system/translate", r#"{"locale":"fr","items":[{"key":"apples","count":"3"}]}"#, &[])
        .await;
    assert_eq!((r.status, r.field().as_str()), (400, "items[0].args.when"), "a missing argument is named");

    // Studio calls: a player may not put strings.
    let token = player_token(&http, "lise").await;
    let r = http
        .call("/v1/language_system/put_strings", r#"{"locale":"en","strings":[{"key":"x","text":"y"}]}"#, &token)
        .await;
    assert_eq!(r.status, 403, "{}", r.json());

    // Machine translation through a model: stored for review, placeholders checked.
    let m = c
        .machine_translate(
            ls::MachineTranslateRequest {
                locale: "fr".into(),
                model_id: "translator".into(),
                ..Default::default()
            },
            &opts(),
        )
        .await
        .unwrap();
    let stored: Vec<(&str, &str)> = m.translated.iter().map(|s| (s.key.as_str(), s.text.as_str())).collect();
    let answer = PIECES.concat();
    assert_eq!(stored, [("menu.start", answer.as_str()), ("quit", answer.as_str())]);
    assert_eq!(m.failures.len(), 1, "{:?}", m.failures);
    assert_eq!(m.failures[0].key, "greet", "the answer dropped {{name}}");
    assert_eq!(m.model_id, "translator");
    assert!(fake.seen.requests("openai") >= 3);
    let tr = |allow_machine: bool| ls::TranslateRequest {
        locale: "fr".into(),
        items: vec![ls::TranslateItem {
            key: "menu.start".into(),
            ..Default::default()
        }],
        allow_machine,
    };
    let plain = c.translate(tr(false), &opts()).await.unwrap().translations.remove(0);
    assert_eq!((plain.text.as_str(), plain.resolved_locale.as_str(), plain.machine_translated), ("Start", "en", false));
    let machine = c.translate(tr(true), &opts()).await.unwrap().translations.remove(0);
    assert_eq!((machine.text.as_str(), machine.resolved_locale.as_str(), machine.machine_translated), (answer.as_str(), "fr", true));
    let missing = c
        .missing_keys(ls::MissingKeysRequest { locale: "fr".into(), ..Default::default() }, &opts())
        .await
        .unwrap();
    assert_eq!(missing.keys, ["greet", "menu.start", "quit"]);
    assert_eq!(missing.machine_translated_keys, ["menu.start", "quit"]);

    // The offline provider does not translate: refused, nothing stored.
    let e = c
        .machine_translate(
            ls::MachineTranslateRequest {
                locale: "de".into(),
                model_id: "offline".into(),
                ..Default::default()
            },
            &opts(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::FailedPrecondition, "{e}");
    let locales = c.list_locales(ls::ListLocalesRequest::default(), &opts()).await.unwrap();
    let tags: Vec<&str> = locales.locales.iter().map(|l| l.tag.as_str()).collect();
    assert_eq!(tags, ["en", "fr", "fr-CA"]);
    let fr = &locales.locales[1];
    assert_eq!((fr.string_count, fr.machine_count), (3, 2));
}
