//! The checks of tidegate's fuzz targets, as a library the targets link.
pub mod checks;
