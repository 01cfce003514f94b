from services.stack import settings_doc


def test_the_readme_documents_every_setting_as_the_classes_define_it():
    # Regenerate with: python -m services.stack settings --write
    assert settings_doc.readme_block(settings_doc.README.read_text()) == settings_doc.render()


def test_the_readme_lists_the_span_attribute_allow_list():
    text = settings_doc.README.read_text()
    assert settings_doc.readme_block(text, "attributes") == settings_doc.render_attributes()


def test_every_setting_has_a_description():
    missing = [line for line in settings_doc.render().splitlines() if line.endswith("|  |")]
    assert not missing, missing
