//! An account and its first key are created together or not at all: a key that cannot be
//! stored leaves no account behind (whose name a retry would find taken), on both engines.
//! Commands that work on existing data refuse a place that holds none (a mistyped
//! `--data-dir` or URL) and create nothing there.

mod common;

use common::{Data, Engine};
use hookline::model::Plan;
use hookline::store::{Location, Store};

/// Makes every insert of an API key fail, as a full disk or a lost connection would.
async fn break_key_inserts(location: &Location, broken: bool) {
    match location {
        Location::Sqlite(dir) => {
            let conn = rusqlite::Connection::open(dir.join("hookline.db")).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(10))
                .unwrap();
            conn.execute_batch(if broken {
                "CREATE TRIGGER no_keys BEFORE INSERT ON api_keys
                 BEGIN SELECT RAISE(FAIL, 'no key may be stored'); END;"
            } else {
                "DROP TRIGGER no_keys;"
            })
            .unwrap();
        }
        Location::Postgres(url) => {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            let sql = if broken {
                "CREATE FUNCTION no_keys() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'no key may be stored'; END $$;
                 CREATE TRIGGER no_keys BEFORE INSERT ON api_keys
                   FOR EACH ROW EXECUTE FUNCTION no_keys();"
            } else {
                "DROP TRIGGER no_keys ON api_keys; DROP FUNCTION no_keys();"
            };
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}

async fn an_account_is_created_with_its_key_or_not_at_all(engine: Engine) {
    let data = Data::fresh(&engine).await;
    let store = Store::open(&data.location).await.unwrap();
    break_key_inserts(&data.location, true).await;
    let failed = hookline::accounts::create(&store, "halfway", Plan::Pro).await;
    assert!(failed.is_err(), "{failed:?}");
    assert!(
        store
            .account_by_name("halfway".into())
            .await
            .unwrap()
            .is_none(),
        "an account without a key was left behind"
    );
    // Once keys can be stored again, the same name is free.
    break_key_inserts(&data.location, false).await;
    let (account, key) = hookline::accounts::create(&store, "halfway", Plan::Pro)
        .await
        .unwrap();
    assert_eq!(account.name, "halfway");
    assert!(key.starts_with("hk_"), "{key}");
}

/// `account key`, `account keys`, `account revoke` and `secrets reencrypt`, pointed at a
/// place without a database: each fails, says so, and leaves the place as it was; once
/// `account create` has made the database, the same commands work.
async fn commands_on_existing_data_refuse_a_place_without_it(engine: Engine) {
    use common::process::{cli, storage_args};
    let data = Data::fresh(&engine).await;
    // On SQLite, a directory that is not there at all as well as an empty one.
    let mut places = vec![data.location.clone()];
    if let Location::Sqlite(dir) = &data.location {
        places.push(Location::Sqlite(dir.join("mistyped")));
    }
    let new_key = hookline::store::Sealer::generate_key();
    let commands: [&[&str]; 4] = [
        &["account", "key", "acme"],
        &["account", "keys", "acme"],
        &["account", "revoke", "acme", "key_0"],
        &["secrets", "reencrypt", "--new-key", &new_key],
    ];
    for place in &places {
        for command in commands {
            let args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
            let (ok, out, err) = cli(&[args, storage_args(place)].concat(), &[]);
            assert!(!ok, "{command:?} on an empty place succeeded: {out}");
            assert!(
                err.contains("there is no Hookline database at")
                    && err.contains("nothing was changed"),
                "{command:?}: {err}"
            );
            match place {
                Location::Sqlite(dir) if dir.ends_with("mistyped") => {
                    assert!(!dir.exists(), "{command:?} created {}", dir.display())
                }
                Location::Sqlite(dir) => assert_eq!(
                    std::fs::read_dir(dir).unwrap().count(),
                    0,
                    "{command:?} wrote into the directory"
                ),
                Location::Postgres(_) => assert!(
                    !Store::exists(place).await.unwrap(),
                    "{command:?} created the schema"
                ),
            }
        }
    }
    // With a database there, they work.
    let storage = storage_args(&data.location);
    let create = [
        vec![
            "account".into(),
            "create".into(),
            "--name".into(),
            "acme".into(),
        ],
        storage.clone(),
    ]
    .concat();
    let (ok, out, err) = cli(&create, &[]);
    assert!(ok, "{out}{err}");
    assert!(Store::exists(&data.location).await.unwrap());
    let keys = [
        vec!["account".into(), "keys".into(), "acme".into()],
        storage,
    ]
    .concat();
    let (ok, out, err) = cli(&keys, &[]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.lines().count(), 1, "one key: {out}");

    // PostgreSQL: a search path whose first schema is empty names that schema (where the
    // migrations would write), even with Hookline's tables further along the path.
    if let (Location::Postgres(with_data), Engine::Postgres(_)) = (&data.location, &engine) {
        let empty = Data::fresh(&engine).await;
        let Location::Postgres(empty_url) = &empty.location else {
            unreachable!()
        };
        let (_, data_schema) = with_data.rsplit_once('=').unwrap();
        let both = Location::Postgres(format!("{empty_url},{data_schema}"));
        let args = [
            vec!["account".into(), "keys".into(), "acme".into()],
            storage_args(&both),
        ]
        .concat();
        let (ok, out, err) = cli(&args, &[]);
        assert!(!ok, "an empty first schema was taken for the data's: {out}");
        assert!(err.contains("there is no Hookline database at"), "{err}");
        assert!(!Store::exists(&empty.location).await.unwrap());
    }
}

on_both_engines!(
    an_account_is_created_with_its_key_or_not_at_all,
    commands_on_existing_data_refuse_a_place_without_it
);
