//! Assistant chains: TAKD (Mirzadeh et al., AAAI 2020) and DGKD (Son et al., ICCV 2021).
//!
//! TAKD: the teacher teaches an assistant of intermediate size with the method, and the trained
//! assistant teaches the student with the same method. DGKD (a guided method,
//! `MethodParams::GUIDED`): assistants of decreasing size, largest first, each taught densely by
//! the teacher and every assistant above it, the student by the teacher and every assistant. The
//! chain's rules live here once; `kdlab distill --assistant` runs the chain's links one after the
//! other and a study plans one run per link, each link a full distillation run.
//!
//! The rules:
//! - the links, in training order: the assistants (largest first), then the student;
//! - each link is trained with the student's training settings and its own architecture;
//! - TAKD (one assistant): the first link is taught by the chain's teacher, with that teacher's
//!   settings (checkpoint epoch, input normalisation, calibration); the student is taught by the
//!   trained assistant, a kdlab run, so none of the first teacher's settings carry over to it;
//! - DGKD: every link is taught by the chain's teacher, with its settings, and guided besides by
//!   the trained runs of the links above it (`Link::guides`, kdlab runs read as they are);
//! - each link's run records its role (`takd_role`, and for the student the chain it ends; DGKD's
//!   `dgkd_role` and the guides).
use anyhow::{bail, Result};

/// What a link is in its chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Assistant,
    Student,
}

/// Who teaches a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaughtBy {
    /// The chain's teacher, with its own settings (epoch, normalisation, calibration).
    Teacher,
    /// The trained assistant: a kdlab run, read as it is.
    Assistant,
}

impl TaughtBy {
    /// Whether the chain teacher's settings (a chosen checkpoint epoch or fit level, input
    /// normalisation, calibration) apply to this link's teacher.
    pub fn keeps_teacher_settings(self) -> bool {
        self == TaughtBy::Teacher
    }
}

/// One run of the chain: `model` distilled from whoever `taught_by` names, guided besides (DGKD)
/// by the trained runs of the links `guides` lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub model: String,
    pub role: Role,
    pub taught_by: TaughtBy,
    /// DGKD: the earlier links (their positions in the chain, largest first) whose trained runs
    /// guide this one beside the teacher; empty in TAKD.
    pub guides: Vec<usize>,
    /// Whether the link belongs to a dense (DGKD) chain.
    pub dense: bool,
    /// The run directory's name under the chain's output directory (`kdlab distill`).
    dir: String,
}

impl Link {
    /// The run directory's name under the chain's output directory (`kdlab distill`): TAKD's
    /// `assistant` and `student`; DGKD's `assistant1` … `assistantK` and `student`.
    pub fn dir_name(&self) -> &str {
        &self.dir
    }
}

/// TAKD's two links, in training order: `assistant` taught by the chain's teacher, then `student`
/// taught by the trained assistant.
pub fn chain(assistant: &str, student: &str) -> [Link; 2] {
    let link = |model: &str, role, taught_by, dir: &str| Link {
        model: model.to_string(),
        role,
        taught_by,
        guides: vec![],
        dense: false,
        dir: dir.to_string(),
    };
    [
        link(assistant, Role::Assistant, TaughtBy::Teacher, "assistant"),
        link(student, Role::Student, TaughtBy::Assistant, "student"),
    ]
}

/// DGKD's links, in training order: each assistant (largest first), then the student, every one
/// taught by the chain's teacher and guided by all the links before it.
pub fn dense_chain(assistants: &[String], student: &str) -> Vec<Link> {
    let mut links: Vec<Link> = assistants
        .iter()
        .enumerate()
        .map(|(i, a)| Link {
            model: a.clone(),
            role: Role::Assistant,
            taught_by: TaughtBy::Teacher,
            guides: (0..i).collect(),
            dense: true,
            dir: format!("assistant{}", i + 1),
        })
        .collect();
    links.push(Link {
        model: student.to_string(),
        role: Role::Student,
        taught_by: TaughtBy::Teacher,
        guides: (0..assistants.len()).collect(),
        dense: true,
        dir: "student".into(),
    });
    links
}

/// The chain of `method` through `assistants` to `student`: DGKD's dense chain for a guided method
/// (which needs at least one assistant), TAKD's for any other (one assistant at most; none: no
/// chain). Refusals name the method and the key.
pub fn links(method: &str, guided: bool, assistants: &[String], student: &str) -> Result<Vec<Link>> {
    check(method, guided, assistants)?;
    Ok(match assistants {
        [] => vec![],
        _ if guided => dense_chain(assistants, student),
        [a] => chain(a, student).to_vec(),
        _ => unreachable!("checked"),
    })
}

/// Refuses a guided method without assistants, and several assistants for any other method.
pub fn check(method: &str, guided: bool, assistants: &[String]) -> Result<()> {
    if guided && assistants.is_empty() {
        bail!(
            "method '{method}' is taught by the teacher and a chain of assistants: give them with assistant \
             (--assistant a,b, largest first; a study block's assistants = [\"a\", \"b\"])"
        );
    }
    if !guided && assistants.len() > 1 {
        bail!(
            "method '{method}' takes one assistant (TAKD), got assistant = {}: several assistants teach densely only \
             with a guided method (dgkd)",
            assistants.join(",")
        );
    }
    Ok(())
}

/// What a link's run records about its place in the chain (run.json's `extra`): `teacher` is the
/// chain's teacher, `assistants` every assistant of the chain, largest first.
pub fn role_record(link: &Link, teacher: &str, assistants: &[String]) -> serde_json::Value {
    if link.dense {
        let guides: Vec<&str> = link.guides.iter().map(|&i| assistants[i].as_str()).collect();
        let role = match link.role {
            Role::Assistant => "assistant",
            Role::Student => "student",
        };
        return serde_json::json!({"dgkd_role": role, "dgkd_teacher": teacher, "dgkd_guides": guides});
    }
    match link.role {
        Role::Assistant => serde_json::json!({"takd_role": "assistant"}),
        Role::Student => {
            serde_json::json!({"takd_role": "student", "takd_teacher": teacher, "takd_assistant": assistants[0]})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_assistant_is_taught_by_the_teacher_and_the_student_by_the_assistant() {
        let [a, s] = chain("cnn_w4", "mlp_32x1");
        assert_eq!((a.model.as_str(), a.role, a.taught_by), ("cnn_w4", Role::Assistant, TaughtBy::Teacher));
        assert_eq!((s.model.as_str(), s.role, s.taught_by), ("mlp_32x1", Role::Student, TaughtBy::Assistant));
        assert!(a.taught_by.keeps_teacher_settings() && !s.taught_by.keeps_teacher_settings());
        assert_eq!((a.dir_name(), s.dir_name()), ("assistant", "student"));
        assert!(a.guides.is_empty() && s.guides.is_empty());
        assert_eq!(links("kd", false, &names(&["cnn_w4"]), "mlp_32x1").unwrap(), [a, s]);
        assert!(links("kd", false, &[], "mlp_32x1").unwrap().is_empty());
    }

    #[test]
    fn the_student_records_the_chain_it_ends() {
        let [a, s] = chain("cnn_w4", "mlp_32x1");
        let chain_of = names(&["cnn_w4"]);
        assert_eq!(role_record(&a, "runs/t", &chain_of), serde_json::json!({"takd_role": "assistant"}));
        assert_eq!(
            role_record(&s, "runs/t", &chain_of),
            serde_json::json!({"takd_role": "student", "takd_teacher": "runs/t", "takd_assistant": "cnn_w4"})
        );
    }

    #[test]
    fn a_dense_chain_guides_each_link_by_the_teacher_and_every_assistant_above_it() {
        let assistants = names(&["cnn_w4", "cnn_w2"]);
        let l = links("dgkd", true, &assistants, "mlp_32x1").unwrap();
        let got: Vec<(&str, Role, TaughtBy, Vec<usize>, &str)> =
            l.iter().map(|k| (k.model.as_str(), k.role, k.taught_by, k.guides.clone(), k.dir_name())).collect();
        assert_eq!(
            got,
            [
                ("cnn_w4", Role::Assistant, TaughtBy::Teacher, vec![], "assistant1"),
                ("cnn_w2", Role::Assistant, TaughtBy::Teacher, vec![0], "assistant2"),
                ("mlp_32x1", Role::Student, TaughtBy::Teacher, vec![0, 1], "student"),
            ]
        );
        assert_eq!(
            role_record(&l[0], "runs/t", &assistants),
            serde_json::json!({"dgkd_role": "assistant", "dgkd_teacher": "runs/t", "dgkd_guides": []})
        );
        assert_eq!(
            role_record(&l[2], "runs/t", &assistants),
            serde_json::json!({"dgkd_role": "student", "dgkd_teacher": "runs/t", "dgkd_guides": ["cnn_w4", "cnn_w2"]})
        );
        // One assistant: the student is guided by the teacher and the assistant.
        let one = links("dgkd", true, &names(&["cnn_w4"]), "mlp_32x1").unwrap();
        assert_eq!((one[1].taught_by, one[1].guides.clone()), (TaughtBy::Teacher, vec![0]));
        assert_eq!(role_record(&one[0], "runs/t", &names(&["cnn_w4"]))["dgkd_role"], "assistant");
    }

    #[test]
    fn refusals_name_the_method_and_the_key() {
        let e = links("dgkd", true, &[], "mlp_32x1").unwrap_err().to_string();
        assert!(e.contains("'dgkd'") && e.contains("assistant"), "{e}");
        let e = links("kd", false, &names(&["cnn_w4", "cnn_w2"]), "mlp_32x1").unwrap_err().to_string();
        assert!(e.contains("'kd'") && e.contains("assistant = cnn_w4,cnn_w2"), "{e}");
    }
}
