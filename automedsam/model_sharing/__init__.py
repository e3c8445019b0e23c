"""Share a trained model: `export.export_model` packs it into one zip, `install.install_model` installs such a zip
into the results root of another machine; `archive_rules` says what the zip may hold, `model_card` what it is."""
