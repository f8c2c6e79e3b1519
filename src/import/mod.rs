//! Dockerfile import (in progress): turning an existing Dockerfile into a recipe. So far the
//! shell reader that splits RUN lines into the commands import recognizes.

pub mod shell;
