//! Embeddings: deterministic, normalised, similarity-preserving vectors.

use async_openai::types::embeddings::{CreateEmbeddingRequestArgs, EncodingFormat};
use base64::Engine;
use serde_json::json;

use crate::helpers::{api_status, client, post_raw, start};

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f32]) -> f32 {
    a.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[tokio::test]
async fn embeddings_are_deterministic_normalised_and_the_requested_size() {
    let fake = start().await;
    let client = client(&fake);
    let req = |dims: Option<u32>| {
        let mut args = CreateEmbeddingRequestArgs::default();
        args.model("text-embedding-3-small").input(vec!["The cat sat on the mat".to_owned(), String::new()]);
        if let Some(d) = dims {
            args.dimensions(d);
        }
        args.build().unwrap()
    };

    let a = client.embeddings().create(req(None)).await.unwrap();
    let b = client.embeddings().create(req(None)).await.unwrap();
    let small = client.embeddings().create(req(Some(256))).await.unwrap();

    assert_eq!(a.object, "list");
    assert_eq!(a.model, "text-embedding-3-small");
    assert_eq!(a.data.len(), 2);
    assert_eq!(a.data[1].index, 1);
    assert_eq!(a.data[0].embedding, b.data[0].embedding);
    assert_eq!(a.data[0].embedding.len(), 1536);
    assert_eq!(small.data[0].embedding.len(), 256);
    assert!((norm(&a.data[0].embedding) - 1.0).abs() < 1e-4);
    assert!((norm(&a.data[1].embedding) - 1.0).abs() < 1e-4, "empty text is a unit vector");
    let expected = tiktoken_rs::cl100k_base_singleton().encode_ordinary("The cat sat on the mat").len();
    assert_eq!(a.usage.prompt_tokens as usize, expected);
    assert_eq!(a.usage.total_tokens, a.usage.prompt_tokens);
    assert_eq!(fake.embedding_request_count(), 3);
}

#[tokio::test]
async fn similar_texts_are_closer_than_unrelated_ones() {
    let fake = start().await;
    let client = client(&fake);
    let texts = [
        "How do I reset my account password?",
        "how can I reset the password for my account",
        "Quarterly revenue grew in the European market",
    ];
    let response = client
        .embeddings()
        .create(
            CreateEmbeddingRequestArgs::default()
                .model("text-embedding-3-small")
                .input(texts.map(str::to_owned).to_vec())
                .build()
                .unwrap(),
        )
        .await
        .unwrap();

    let v: Vec<_> = response.data.iter().map(|d| &d.embedding).collect();
    let similar = cosine(v[0], v[1]);
    let unrelated = cosine(v[0], v[2]);
    assert!(similar > 0.4, "{similar}");
    assert!(similar > unrelated + 0.3, "{similar} vs {unrelated}");
}

#[tokio::test]
async fn base64_embeddings_decode_to_the_float_vector() {
    let fake = start().await;
    let client = client(&fake);
    let args = |format| {
        CreateEmbeddingRequestArgs::default()
            .model("text-embedding-3-small")
            .input("base64 please")
            .dimensions(64u32)
            .encoding_format(format)
            .build()
            .unwrap()
    };

    let floats = client.embeddings().create(args(EncodingFormat::Float)).await.unwrap();
    let encoded = client.embeddings().create_base64(args(EncodingFormat::Base64)).await.unwrap();

    let bytes = base64::engine::general_purpose::STANDARD.decode(&encoded.data[0].embedding.0).unwrap();
    let decoded: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(decoded, floats.data[0].embedding);
}

#[tokio::test]
async fn too_many_inputs_or_token_arrays_are_rejected_with_400() {
    let fake = start().await;
    let client = client(&fake);

    let too_many = client
        .embeddings()
        .create(
            CreateEmbeddingRequestArgs::default()
                .model("text-embedding-3-small")
                .input(vec!["x".to_owned(); 2049])
                .build()
                .unwrap(),
        )
        .await;
    assert_eq!(api_status(&too_many), 400);

    let tokens = post_raw(&fake, "/embeddings", &json!({"model": "m", "input": [1, 2, 3]})).await;
    assert_eq!(tokens.status(), 400);
}
