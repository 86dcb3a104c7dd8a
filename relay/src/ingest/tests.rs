//! Unit tests of the ingest; the end-to-end tests with the loadgen's simulated device are in
//! `tests/tests/ingest_pipeline.rs`.
