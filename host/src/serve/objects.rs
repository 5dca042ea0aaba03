//! The objects `serve` creates at start: the example set-up of a new data directory, and the
//! config file's `[[topic]]`, `[[queue]]`, `[[subscription]]`, `[[rule]]` and `[[device]]`
//! entries that do not exist yet (existing ones are left alone).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{RuleConfig, ServeConfig};
use crate::devices::DeviceRegistry;
use crate::rules::engine::RuleError;
use crate::rules::registry::{RegistryError, RuleRegistry};
use crate::rules::spec::{RuleDefinition, RuleState};
use crate::rules::{RuleEngine, RuleRuntime, RuleSpec};
use crate::store::{QueueAttributes, Store, StoreError, SubscriptionSpec};

use super::{ServeError, OVERHEAT_WASM};

/// Why a rule of the config file (or the example rule) could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RuleSetupError {
    /// Its SQL or Wasm file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Its SQL file is not text.
    #[error("{path}: SQL file is not UTF-8")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Where the bytes stop being UTF-8.
        #[source]
        source: std::string::FromUtf8Error,
    },
    /// Both `sql` and `sql_file`.
    #[error("give sql or sql_file, not both")]
    SqlTwice,
    /// The definition, its grant or its module is refused.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// The registry refused to create or start it.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The task that created it stopped.
    #[error("creating the rule stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The quickstart set-up on an empty data directory: topic `alerts`, queue `alerts-q`,
/// subscription `alerts-to-q`, and the running overheat rule.
pub(super) async fn create_default_setup(
    store: &Store,
    registry: &Arc<RuleRegistry>,
) -> Result<(), ServeError> {
    store.create_topic("alerts").await?;
    store
        .create_queue("alerts-q", QueueAttributes::default())
        .await?;
    store
        .create_subscription("alerts", "alerts-to-q", SubscriptionSpec::queue("alerts-q"))
        .await?;
    let def = RuleDefinition {
        module: Some(OVERHEAT_WASM.to_vec()),
        from: Some("/+/+/user/update".into()),
        actions: vec!["forward:alerts".into()],
        ..RuleDefinition::default()
    };
    let created = match def.into_spec("overheat") {
        Ok(spec) => create_running_rule(registry, spec).await,
        Err(e) => Err(e.into()),
    };
    created.map_err(|e| ServeError::ExampleRule(Box::new(e)))?;
    tracing::info!("new data directory: created topic alerts, queue alerts-q, subscription alerts-to-q and the running rule overheat");
    Ok(())
}

/// Creates `spec` and starts it, unless a rule of that name exists.
async fn create_running_rule(
    registry: &Arc<RuleRegistry>,
    spec: RuleSpec,
) -> Result<(), RuleSetupError> {
    let registry = registry.clone();
    tokio::task::spawn_blocking(move || -> Result<(), RegistryError> {
        let name = spec.name.clone();
        if registry.contains(&name) {
            // Created on an earlier start, or (a shared catalog) by another process first.
            return Ok(());
        }
        registry.create(spec)?;
        registry.set_state(&name, RuleState::Running)?;
        Ok(())
    })
    .await??;
    Ok(())
}

/// The config file, as errors about its tables name it.
fn config_file(config: &ServeConfig) -> PathBuf {
    config.config_file.clone().unwrap_or_default()
}

/// The error about `[[rule]]` `r`.
fn rule_error(config: &ServeConfig, r: &RuleConfig, source: RuleSetupError) -> ServeError {
    ServeError::ConfiguredRule {
        file: config_file(config),
        name: r.name.clone(),
        module: r.wasm_file.as_ref().map(|p| config.config_dir.join(p)),
        source: Box::new(source),
    }
}

/// Checks every `[[rule]]` of the config file as `rule create` would (definition, grant,
/// module compiled and trial-instantiated), so a bad one stops the start before anything is
/// written; the error names the rule and, for a module, its file. Returns the checked rules.
pub(super) fn check_configured_rules<'a>(
    config: &'a ServeConfig,
    runtime: &Arc<RuleRuntime>,
) -> Result<Vec<(RuleSpec, &'a RuleConfig)>, ServeError> {
    let checker = RuleEngine::new(runtime.clone(), None);
    let mut specs = Vec::with_capacity(config.objects.rule.len());
    for r in &config.objects.rule {
        let checked = || -> Result<RuleSpec, RuleSetupError> {
            let spec = rule_definition(r, &config.config_dir)?.into_spec(&r.name)?;
            checker.validate(&spec)?;
            Ok(spec)
        };
        let spec = checked().map_err(|e| rule_error(config, r, e))?;
        specs.push((spec, r));
    }
    Ok(specs)
}

/// Creates the config file's objects that do not exist yet (its rules as checked by
/// [`check_configured_rules`]); existing ones are left alone.
pub(super) async fn create_configured_objects(
    config: &ServeConfig,
    rules: Vec<(RuleSpec, &RuleConfig)>,
    store: &Store,
    registry: &Arc<RuleRegistry>,
) -> Result<(), ServeError> {
    let objects = &config.objects;
    let object_error =
        |kind: &'static str, name: &str, source: StoreError| ServeError::ConfiguredObject {
            file: config_file(config),
            kind,
            name: name.to_owned(),
            source: Box::new(source),
        };
    for t in &objects.topic {
        store
            .create_topic(&t.name)
            .await
            .map_err(|e| object_error("topic", &t.name, e))?;
    }
    for q in &objects.queue {
        match store.get_queue(&q.name).await {
            Ok(_) => {}
            Err(StoreError::QueueNotExist { .. }) => {
                store
                    .create_queue(&q.name, q.attributes.clone().attributes())
                    .await
                    .map_err(|e| object_error("queue", &q.name, e))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    for s in &objects.subscription {
        match store.get_subscription(&s.topic, &s.name).await {
            Ok(_) => {}
            Err(StoreError::SubscriptionNotExist { .. }) => {
                let mut spec = SubscriptionSpec::queue(s.queue.clone());
                spec.filter_tag = s.filter_tag.clone();
                store
                    .create_subscription(&s.topic, &s.name, spec)
                    .await
                    .map_err(|e| object_error("subscription", &s.name, e))?;
            }
            Err(e) => return Err(object_error("subscription", &s.name, e)),
        }
    }
    for (spec, r) in rules {
        create_running_rule(registry, spec)
            .await
            .map_err(|e| rule_error(config, r, e))?;
    }
    Ok(())
}

/// Registers the config file's `[[device]]` entries that do not exist yet; a generated secret is
/// logged once, the only place it appears.
pub(super) async fn create_configured_devices(
    config: &ServeConfig,
    devices: &DeviceRegistry,
) -> Result<(), ServeError> {
    for d in &config.objects.device {
        let name = format!("{}/{}", d.product_key, d.device_name);
        if devices.lookup(&d.product_key, &d.device_name).is_some() {
            continue;
        }
        let created = devices
            .create_with_secret(
                &d.product_key,
                &d.device_name,
                d.secret.clone(),
                d.tags.clone(),
            )
            .await
            .map_err(|source| ServeError::ConfiguredDevice {
                file: config_file(config),
                name: name.clone(),
                source: Box::new(source),
            })?;
        if d.secret.is_none() {
            tracing::info!(
                "[[device]] {name} registered; its secret (shown only now): {}",
                created.secret
            );
        } else {
            tracing::info!("[[device]] {name} registered with the configured secret");
        }
    }
    Ok(())
}

/// A `[[rule]]` as the definition `rule create` takes, its files read (relative to `dir`).
fn rule_definition(r: &RuleConfig, dir: &Path) -> Result<RuleDefinition, RuleSetupError> {
    let read = |p: &Path| {
        let path = dir.join(p);
        std::fs::read(&path).map_err(|source| RuleSetupError::Read { path, source })
    };
    let sql = match (&r.sql, &r.sql_file) {
        (Some(s), None) => Some(s.clone()),
        (None, Some(p)) => {
            Some(
                String::from_utf8(read(p)?).map_err(|source| RuleSetupError::NotUtf8 {
                    path: dir.join(p),
                    source,
                })?,
            )
        }
        (None, None) => None,
        (Some(_), Some(_)) => return Err(RuleSetupError::SqlTwice),
    };
    let module = r.wasm_file.as_deref().map(read).transpose()?;
    Ok(RuleDefinition {
        sql,
        module,
        from: r.from.clone(),
        data_type: r.data_type.clone(),
        actions: r.actions.clone(),
        error_action: r.error_action.clone(),
        grant: r.grant.clone(),
        timezone: r.timezone.clone(),
    })
}
