//! Moderations: the trigger word flags, everything else passes.

use async_openai::types::moderations::{
    CreateModerationRequestArgs, ModInputType, ModerationContentPart, ModerationImageURLInput, ModerationInput,
    ModerationTextInput,
};

use crate::helpers::{client, contents, request, start, stream_all, user};

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

#[tokio::test]
async fn trigger_at_puts_the_trigger_word_in_the_answer_but_not_in_the_question() {
    let fake = start().await;
    let client = client(&fake);
    let question = "Tell me a story [[fake tokens=6 trigger_at=4]]";

    let items = stream_all(&client, request(vec![user(question)])).await.unwrap();

    let answer = contents(&items).concat();
    assert_eq!(answer, "Echo: Tell me forbidden-topic story lorem");
    let flagged = |text: &str| {
        let text = text.to_owned();
        let client = client.clone();
        async move {
            let request = CreateModerationRequestArgs::default().input(ModerationInput::String(text)).build().unwrap();
            client.moderations().create(request).await.unwrap().results[0].flagged
        }
    };
    assert!(flagged(&answer).await, "the answer is flagged");
    assert!(!flagged(question).await, "the question is not");
}
