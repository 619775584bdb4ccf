//! Moderations: the trigger word flags, everything else passes.

use async_openai::types::moderations::{
    CreateModerationRequestArgs, ModInputType, ModerationContentPart, ModerationImageURLInput, ModerationInput,
    ModerationTextInput,
};

use crate::helpers::{client, start};

#[tokio::test]
async fn text_with_the_trigger_word_is_flagged_and_other_text_is_not() {
    let fake = start().await;
    let client = client(&fake);

    let response = client
        .moderations()
        .create(
            CreateModerationRequestArgs::default()
                .model("omni-moderation-latest")
                .input(ModerationInput::StringArray(vec![
                    "Let's talk about the FORBIDDEN-TOPIC now".to_owned(),
                    "What a lovely day".to_owned(),
                ]))
                .build()
                .unwrap(),
        )
        .await
        .unwrap();

    assert!(response.id.starts_with("modr-"));
    assert_eq!(response.model, "omni-moderation-latest");
    let [bad, good] = &response.results[..] else {
        panic!("expected two results, got {:?}", response.results);
    };
    assert!(bad.flagged);
    assert!(bad.categories.violence && bad.categories.harassment);
    assert!(bad.category_scores.violence > 0.9);
    assert!(!good.flagged);
    assert!(!good.categories.violence);
    assert!(good.category_scores.violence < 0.01);
    assert_eq!(good.category_applied_input_types.hate, [ModInputType::Text]);
}

#[tokio::test]
async fn multimodal_input_gets_one_result_covering_text_and_image() {
    let fake = start().await;
    let client = client(&fake);

    let response = client
        .moderations()
        .create(
            CreateModerationRequestArgs::default()
                .input(ModerationInput::MultiModal(vec![
                    ModerationContentPart::Text(ModerationTextInput { text: "forbidden-topic".to_owned() }),
                    ModerationContentPart::ImageUrl(ModerationImageURLInput {
                        image_url: "https://example.com/a.png".to_owned(),
                    }),
                ]))
                .build()
                .unwrap(),
        )
        .await
        .unwrap();

    assert_eq!(response.results.len(), 1);
    let result = &response.results[0];
    assert!(result.flagged);
    assert_eq!(result.category_applied_input_types.violence, [ModInputType::Text, ModInputType::Image]);
}
