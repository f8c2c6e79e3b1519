//! Dockerfile import (in progress): turning an existing Dockerfile into a recipe. So far the
//! shell reader that splits RUN lines into commands, and what each command means in a recipe.

pub mod commands;
pub mod shell;
